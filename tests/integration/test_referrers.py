"""The referrers API for mirrored repositories, as a signing or SBOM client sees it.

The session upstream (docker-registry 2.8) lacks the referrers API: against it the mirror
reads the referrers tag scheme (an index tagged ``sha256-<hex>``), as clients do. The
pass-through of an upstream that has the API is shown against a scripted stub upstream,
since the real one cannot play it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy
from tests.support.registry import Registry
from tests.support.scripted import Answer, Scripted

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SIG = "application/vnd.example.signature"
SBOM = "application/vnd.example.sbom"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(registry: str, repo: str, data: bytes) -> dict[str, Any]:
    digest = _digest(data)
    # docker-registry 2.8 takes no monolithic POST: a session, then one PUT.
    started = http_request("POST", f"{registry}/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started.body
    location = started.header("Location") or ""
    if location.startswith("/"):
        location = registry + location
    joiner = "&" if "?" in location else "?"
    resp = http_request("PUT", f"{location}{joiner}digest={digest}", data=data)
    assert resp.status == 201, resp.body
    return {"digest": digest, "size": len(data)}


def _put_manifest(registry: str, repo: str, ref: str, body: bytes, media_type: str) -> None:
    resp = http_request(
        "PUT",
        f"{registry}/v2/{repo}/manifests/{ref}",
        data=body,
        headers={"Content-Type": media_type},
    )
    assert resp.status == 201, resp.body


def push_referrer(
    registry: str, repo: str, subject: dict[str, Any], artifact_type: str
) -> dict[str, Any]:
    """Push an artifact manifest whose ``subject`` is ``subject`` (a descriptor), and add
    it to the ``sha256-<hex>`` index of the referrers tag scheme as oras and cosign do
    against a registry without the API. Returns the artifact's descriptor."""
    config = {"mediaType": EMPTY, **_push_blob(registry, repo, b"{}")}
    layer = {"mediaType": artifact_type, **_push_blob(registry, repo, os.urandom(64))}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config,
        "layers": [layer],
        "subject": subject,
    }
    body = json.dumps(manifest).encode()
    digest = _digest(body)
    _put_manifest(registry, repo, digest, body, OCI_MANIFEST)
    descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
        "artifactType": artifact_type,
    }
    tag = subject["digest"].replace(":", "-")
    listed = http_request(
        "GET", f"{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_INDEX}
    )
    entries = json.loads(listed.body)["manifests"] if listed.status == 200 else []
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, descriptor]}
    _put_manifest(registry, repo, tag, json.dumps(index).encode(), OCI_INDEX)
    return descriptor


def descriptor_of(image: PushedImage) -> dict[str, Any]:
    return {"mediaType": image.media_type, "digest": image.digest, "size": len(image.raw_manifest)}


def referrers(mirror: MirrorProcess, repo: str, digest: str, query: str = "") -> Any:
    return http_request("GET", f"{mirror.url}/v2/{repo}/referrers/{digest}{query}")


def test_referrers_of_an_upstream_without_the_api_come_from_the_tag_scheme(
    image_factory, mirror: MirrorProcess, upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("acme/signed")
    subject = descriptor_of(image)
    sig = push_referrer(upstream.url, image.repo, subject, SIG)
    sbom = push_referrer(upstream.url, image.repo, subject, SBOM)

    got = referrers(mirror, image.repo, image.digest)
    assert got.status == 200, got.body
    assert got.header("Content-Type") == OCI_INDEX
    assert got.header("OCI-Filters-Applied") is None
    doc = json.loads(got.body)
    assert doc["mediaType"] == OCI_INDEX and doc["schemaVersion"] == 2
    assert doc["manifests"] == [sig, sbom]
    asked = [(r.method, r.path) for r in upstream_proxy.requests(path_contains=f"/{image.repo}/")]
    assert ("GET", f"/v2/{image.repo}/referrers/{image.digest}") in asked
    tag = image.digest.replace(":", "-")
    assert any(path == f"/v2/{image.repo}/manifests/{tag}" for _, path in asked)

    # What it lists pulls through the mirror like any manifest, bytes as pushed.
    upstream_proxy.reset()
    pulled = http_request(
        "GET",
        f"{mirror.url}/v2/{image.repo}/manifests/{sig['digest']}",
        headers={"Accept": OCI_MANIFEST},
    )
    assert pulled.status == 200
    assert _digest(pulled.body) == sig["digest"]
    assert json.loads(pulled.body)["subject"]["digest"] == image.digest


def test_artifact_type_filter_says_it_was_applied(
    image_factory, mirror: MirrorProcess, upstream: Registry
) -> None:
    image = image_factory("acme/filtered")
    subject = descriptor_of(image)
    sig = push_referrer(upstream.url, image.repo, subject, SIG)
    push_referrer(upstream.url, image.repo, subject, SBOM)

    got = referrers(mirror, image.repo, image.digest, f"?artifactType={SIG}")
    assert got.status == 200
    assert got.header("OCI-Filters-Applied") == "artifactType"
    assert json.loads(got.body)["manifests"] == [sig]
    none = referrers(mirror, image.repo, image.digest, "?artifactType=application/vnd.other")
    assert none.status == 200 and json.loads(none.body)["manifests"] == []


def test_a_subject_without_referrers_has_an_empty_list(
    image_factory, mirror: MirrorProcess
) -> None:
    image = image_factory("acme/unsigned")
    got = referrers(mirror, image.repo, image.digest)
    assert got.status == 200
    assert json.loads(got.body) == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_are_cached_with_the_tag_freshness(
    image_factory, mirror_factory, upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("acme/fresh")
    subject = descriptor_of(image)
    sig = push_referrer(upstream.url, image.repo, subject, SIG)
    mirror = mirror_factory(upstream_proxy.url, config={"mirror": {"tag_freshness": "1h"}})
    assert json.loads(referrers(mirror, image.repo, image.digest).body)["manifests"] == [sig]
    upstream_proxy.reset()
    for _ in range(3):
        got = referrers(mirror, image.repo, image.digest)
        assert got.status == 200 and json.loads(got.body)["manifests"] == [sig]
    assert upstream_proxy.requests() == []


def test_referrers_served_from_cache_when_the_upstream_is_down(
    image_factory, mirror: MirrorProcess, upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("acme/outage")
    subject = descriptor_of(image)
    sig = push_referrer(upstream.url, image.repo, subject, SIG)
    assert json.loads(referrers(mirror, image.repo, image.digest).body)["manifests"] == [sig]

    upstream_proxy.fail_status = 503
    got = referrers(mirror, image.repo, image.digest)
    assert got.status == 200
    assert json.loads(got.body)["manifests"] == [sig]
    assert upstream_proxy.count(path_contains="/referrers/") >= 2  # it was asked, and failed

    # A subject never asked about has nothing to serve: the outage shows.
    other = image_factory("acme/outage", tag="v2")
    upstream_proxy.fail_status = 503
    failed = referrers(mirror, image.repo, other.digest)
    assert failed.status == 503
    assert json.loads(failed.body)["errors"][0]["code"] == "UNAVAILABLE"


def test_referrers_from_the_tag_scheme_survive_a_restart_during_an_outage(
    image_factory, mirror: MirrorProcess, upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("acme/restarted")
    subject = descriptor_of(image)
    sig = push_referrer(upstream.url, image.repo, subject, SIG)
    assert json.loads(referrers(mirror, image.repo, image.digest).body)["manifests"] == [sig]
    mirror.stop()
    upstream_proxy.fail_status = 503
    mirror.start()
    got = referrers(mirror, image.repo, image.digest)
    assert got.status == 200, got.body
    assert json.loads(got.body)["manifests"] == [sig]


def test_referrers_api_of_the_upstream_is_passed_through(mirror_factory) -> None:
    """Against a scripted stub upstream: the session registry (docker-registry 2.8) has no
    referrers API. What the stub lists is passed on, minus fields no descriptor has and
    entries that are not descriptors; the tag scheme is not asked for."""
    subject = "sha256:" + "a" * 64
    sig = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + "b" * 64,
        "size": 321,
        "artifactType": SIG,
        "annotations": {"org.example": "yes"},
    }
    sbom = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + "c" * 64,
        "size": 123,
        "artifactType": SBOM,
    }
    listed = [
        {**sig, "x-extra": "dropped"},
        sbom,
        {"mediaType": OCI_MANIFEST, "digest": "../../etc/passwd", "size": 1},
        "not a descriptor",
    ]

    def script(method: str, path: str) -> Answer:
        if path == "/v2/" or path == "/v2":
            return 200, {"Content-Type": "application/json"}, b"{}"
        if path.startswith(f"/v2/acme/app/referrers/{subject}"):
            doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}
            return 200, {"Content-Type": OCI_INDEX}, json.dumps(doc).encode()
        return 404, {"Content-Type": "application/json"}, b'{"errors":[]}'

    stub = Scripted(script).start()
    try:
        mirror = mirror_factory(stub.url)
        got = referrers(mirror, "acme/app", subject)
        assert got.status == 200, got.body
        assert json.loads(got.body)["manifests"] == [sig, sbom]
        filtered = referrers(mirror, "acme/app", subject, f"?artifactType={SBOM}")
        assert filtered.header("OCI-Filters-Applied") == "artifactType"
        assert json.loads(filtered.body)["manifests"] == [sbom]
        paths = [r.path for r in stub.requests]
        assert not any("/manifests/" in p for p in paths)
    finally:
        stub.stop()
