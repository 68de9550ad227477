"""Who may read a digest (design.md, "Who may read a digest"), as an attacker tries it:
a hostile upstream that claims to hold everything, a manifest that names another
repository's private blobs through fields its type does not define, a download in flight
from another upstream, a token scoped to a namesake on the default upstream."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from tests.support.claiming import ClaimingUpstream
from tests.support.images import ImageSet, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy
from tests.support.regclient import bearer_request, fetch_token
from tests.support.tokens import TokenIssuer

pytestmark = pytest.mark.integration

KiB = 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


@pytest.fixture
def claiming() -> ClaimingUpstream:
    with ClaimingUpstream() as server:
        yield server


def test_an_upstream_that_claims_everything_reads_nothing_another_brought(
    claiming: ClaimingUpstream, mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet,
    tmp_path: Path,
) -> None:
    image = images.oci_small
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url,
        config={"mirror": {"upstreams": [{"name": "evil.example", "remoteurl": claiming.url}]}},
    )
    pull_dir(image.on(mirror.host), tmp_path / "victim")
    stored = set(mirror.stored_files())
    assert image.blob_digests | {image.digest} <= stored

    for digest in sorted(image.blob_digests):
        for path in (f"/v2/evil.example/x/blobs/{digest}", f"/v2/x/blobs/{digest}?ns=evil.example"):
            got = http_request("GET", mirror.url + path)
            assert got.status == 404, path
            assert _code(got.body) == "BLOB_UNKNOWN"
        head = http_request("HEAD", f"{mirror.url}/v2/evil.example/x/blobs/{digest}")
        assert head.header("Content-Length") == "7"  # its own claim, not the stored size
        # It had to serve the bytes itself, and could not.
        assert claiming.gets(digest)

    # Its tag names the victim's manifest: the manifest is fetched from it, not read here.
    claiming.tag_digest = image.digest
    by_tag = http_request(
        "GET", f"{mirror.url}/v2/evil.example/x/manifests/latest", headers={"Accept": OCI_MANIFEST}
    )
    assert by_tag.status == 404 and _code(by_tag.body) == "MANIFEST_UNKNOWN"
    by_digest = http_request("GET", f"{mirror.url}/v2/evil.example/x/manifests/{image.digest}")
    assert by_digest.status == 404 and _code(by_digest.body) == "MANIFEST_UNKNOWN"
    assert image.raw_manifest not in by_tag.body + by_digest.body

    # Its own (verified) manifest lists the victim's layers in the fields an image manifest
    # defines: that proves nothing about bytes it never served.
    claiming.tag_digest = None
    claiming.manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": image.source.config_digest, "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": d, "size": 1} for d in image.source.layer_digests],
        }
    ).encode()
    own = http_request("GET", f"{mirror.url}/v2/evil.example/x/manifests/refs")
    assert own.status == 200 and own.body == claiming.manifest
    for digest in sorted(image.blob_digests):
        got = http_request("GET", f"{mirror.url}/v2/evil.example/x/blobs/{digest}")
        assert got.status == 404 and _code(got.body) == "BLOB_UNKNOWN"
    # The honest upstream's clients still read everything.
    pull_dir(image.on(mirror.host), tmp_path / "again")


def test_only_the_fields_a_media_type_defines_reference_anything(
    token_registry_factory, image_factory, mirror_factory
) -> None:
    upstream = token_registry_factory(private={"team/a"})  # owner may read team/a; anyone team/b
    private_a = image_factory("team/a", registry=upstream)
    public_b = image_factory("team/b", registry=upstream)
    owner = upstream.creds
    mirror = mirror_factory(
        upstream.url, config={"proxy": {"username": owner[0], "password": owner[1]}}
    )
    secret = private_a.source.layer_digests[0]
    # team/b's image manifest names team/a's layer and manifest in fields an image manifest
    # does not define (blobs, subject; distribution itself refuses an image manifest with
    # "manifests", which the unit tests of manifest.children cover).
    doc = json.loads(public_b.raw_manifest)
    doc["blobs"] = [{"mediaType": "application/octet-stream", "digest": secret, "size": 1}]
    doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": private_a.digest, "size": 1}
    body = json.dumps(doc).encode()
    put = bearer_request(
        "PUT",
        f"{upstream.url}/v2/team/b/manifests/extra",
        headers={"Content-Type": OCI_MANIFEST},
        data=body,
        creds=owner,
    )
    assert put.status == 201, put.body

    # Someone allowed to read team/a pulled it: its layer and manifest are in the store.
    assert http_request("GET", f"{mirror.url}/v2/team/a/blobs/{secret}").status == 200
    assert http_request("GET", f"{mirror.url}/v2/team/a/manifests/{private_a.digest}").status == 200
    assert http_request("GET", f"{mirror.url}/v2/team/b/manifests/extra").body == body

    leak = http_request("GET", f"{mirror.url}/v2/team/b/blobs/{secret}")
    assert leak.status == 404 and _code(leak.body) == "BLOB_UNKNOWN"
    leak = http_request("GET", f"{mirror.url}/v2/team/b/manifests/{private_a.digest}")
    assert leak.status == 404 and _code(leak.body) == "MANIFEST_UNKNOWN"
    # What the fields it does define reference is team/b's.
    for digest in public_b.blob_digests:
        assert http_request("GET", f"{mirror.url}/v2/team/b/blobs/{digest}").status == 200


def test_a_client_never_joins_another_upstreams_download(
    registry_factory, proxy_factory, mirror_factory, upstream_proxy: RecordingProxy, image_factory
) -> None:
    """The same blob from two upstreams: the other upstream's download in flight (slow, and
    its bytes corrupt) is not this client's; its own upstream serves it."""
    second = registry_factory()
    other = proxy_factory(second.url)
    on_hub = image_factory("library/twin", layers=(384 * KiB,), seed="twin-content")
    on_other = image_factory("org/twin", layers=(384 * KiB,), seed="twin-content", registry=second)
    layer = on_hub.source.layer_digests[0]
    assert layer in on_other.blob_digests
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"mirror": {"upstreams": [{"name": "other.example", "remoteurl": other.url}]}},
    )
    other.blob_rate = 64 * KiB  # six seconds for the layer
    other.corrupt_blobs = True
    outcome: dict[str, object] = {}

    def other_client() -> None:
        try:
            resp = http_request(
                "GET", f"{mirror.url}/v2/other.example/org/twin/blobs/{layer}", timeout=30
            )
            outcome["other"] = resp.status, hashlib.sha256(resp.body).hexdigest()
        except Exception as exc:  # the transfer is cut: the mirror never completes bad bytes
            outcome["other"] = exc

    thread = threading.Thread(target=other_client)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not any((mirror.root / "tmp").glob("*")):  # its download has begun
            assert time.monotonic() < deadline, "the other upstream's download never began"
            time.sleep(0.05)
        time.sleep(0.5)
        upstream_proxy.reset()
        mine = http_request("GET", f"{mirror.url}/v2/library/twin/blobs/{layer}", timeout=30)
        assert mine.status == 200
        assert "sha256:" + hashlib.sha256(mine.body).hexdigest() == layer
        assert [e.method for e in upstream_proxy.requests(path_contains=layer)] == ["GET"]
    finally:
        thread.join(timeout=30)
    # The corrupt download never completed for its own client either.
    assert outcome["other"] != (200, layer.removeprefix("sha256:"))


def test_a_token_for_a_repository_does_not_read_its_namesake_on_another_upstream(
    registry_factory, image_factory, mirror_factory, upstream_proxy: RecordingProxy,
    tmp_path: Path,
) -> None:
    second = registry_factory()
    image_factory("acme/app", registry=second)
    image_factory("acme/app")
    issuer = TokenIssuer(
        service="pullthrough-mirror",
        issuer="mirror-token-issuer",
        users={"alice": "alice-secret-1"},
        private=set(),
        root=tmp_path / "client-issuer",
    )
    issuer.start()
    try:
        mirror = mirror_factory(
            upstream_proxy.url,
            config={
                "auth": {
                    "token": {
                        "realm": issuer.url,
                        "service": issuer.service,
                        "issuer": issuer.issuer,
                        "rootcertbundle": str(issuer.cert_path),
                    }
                },
                "mirror": {"upstreams": [{"name": "ghcr.io", "remoteurl": second.url}]},
            },
        )

        def get(path: str, *scopes: str) -> tuple[int, str]:
            token = fetch_token(issuer.url, service=issuer.service, scopes=scopes)
            resp = http_request(
                "GET", mirror.url + path, headers={"Authorization": f"Bearer {token}"}
            )
            return resp.status, resp.header("WWW-Authenticate") or ""

        default_scope = "repository:acme/app:pull"
        assert get("/v2/acme/app/manifests/v1", default_scope)[0] == 200
        for path in ("/v2/acme/app/manifests/v1?ns=ghcr.io", "/v2/ghcr.io/acme/app/manifests/v1"):
            status, challenge = get(path, default_scope)
            assert status == 401, path
            assert 'scope="repository:ghcr.io/acme/app:pull"' in challenge
            assert get(path, "repository:ghcr.io/acme/app:pull")[0] == 200
        # Docker Hub's library/ is part of the name a grant covers.
        assert get("/v2/acme/app/manifests/v1?ns=docker.io", default_scope)[0] == 200
        # A real client follows the challenge to the right scope.
        pull_dir(f"{mirror.host}/ghcr.io/acme/app:v1", tmp_path / "pulled")
    finally:
        issuer.stop()
