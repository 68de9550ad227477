"""Several upstreams from one mirror: routed by ``?ns=`` or a path prefix, one shared store,
separate repositories, and no blob served for a repository its upstream does not confirm."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import KiB
from tests.support.images import PushedImage, manifest_digest_in_dir, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class TwoUpstreams:
    mirror: MirrorProcess
    hub: RecordingProxy  # in front of the session upstream, named docker.io
    ghcr: RecordingProxy  # in front of a second registry, named ghcr.io
    ghcr_registry: Registry


@pytest.fixture
def two(registry_factory, proxy_factory, mirror_factory, upstream_proxy) -> TwoUpstreams:
    second = registry_factory()
    ghcr = proxy_factory(second.url)
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"mirror": {"upstreams": [{"name": "ghcr.io", "remoteurl": ghcr.url}]}},
    )
    return TwoUpstreams(mirror, upstream_proxy, ghcr, second)


def _get(mirror: MirrorProcess, path: str) -> tuple[int, dict[str, str | None], bytes]:
    resp = http_request("GET", f"{mirror.url}{path}", headers={"Accept": OCI_MANIFEST})
    headers = {k: resp.header(k) for k in ("OCI-Namespace", "Docker-Content-Digest")}
    return resp.status, headers, resp.body


def test_ns_and_path_prefix_route_to_the_second_upstream(
    two: TwoUpstreams, image_factory, tmp_path: Path
) -> None:
    app = image_factory("org/app", registry=two.ghcr_registry)
    status, headers, _ = _get(two.mirror, "/v2/org/app/manifests/v1?ns=ghcr.io")
    assert status == 200
    assert headers == {"OCI-Namespace": "ghcr.io", "Docker-Content-Digest": app.digest}
    status, headers, _ = _get(two.mirror, "/v2/ghcr.io/org/app/manifests/v1")
    assert status == 200 and headers["OCI-Namespace"] == "ghcr.io"
    assert two.hub.requests(path_contains="org/app") == []  # never asked the default

    pull_dir(f"{two.mirror.host}/ghcr.io/org/app:v1", tmp_path / "prefixed")
    assert manifest_digest_in_dir(tmp_path / "prefixed") == app.digest


def test_docker_hub_rules_apply_only_to_docker_hub(two: TwoUpstreams, image_factory) -> None:
    image_factory("single", registry=two.ghcr_registry)  # a one-component name on ghcr
    status, _, _ = _get(two.mirror, "/v2/ghcr.io/single/manifests/v1")
    assert status == 200
    paths = {x.path for x in two.ghcr.requests() if "/manifests/" in x.path}
    assert paths and all(p.startswith("/v2/single/manifests/") for p in paths), paths


def test_unknown_registry_by_ns_or_prefix_is_refused_with_a_hint(two: TwoUpstreams) -> None:
    for path in ("/v2/org/app/manifests/v1?ns=quay.io", "/v2/quay.io/org/app/manifests/v1"):
        status, _, body = _get(two.mirror, path)
        assert status == 404
        error = json.loads(body)["errors"][0]
        assert error["code"] == "NAME_UNKNOWN"
        assert "quay.io" in error["message"] and "mirror.upstreams" in error["message"]
    assert two.hub.requests(path_contains="org/app") == []


def test_same_digest_through_two_upstreams_is_one_file_but_two_repositories(
    two: TwoUpstreams, image_factory, tmp_path: Path
) -> None:
    on_hub = image_factory("library/shared", layers=(300 * KiB,), seed="shared-content")
    on_ghcr = image_factory(
        "org/shared", layers=(300 * KiB,), seed="shared-content", registry=two.ghcr_registry
    )
    assert on_hub.digest == on_ghcr.digest
    pull_dir(on_hub.on(two.mirror.host), tmp_path / "hub")
    two.ghcr.reset()
    pull_dir(f"{two.mirror.host}/ghcr.io/org/shared:v1", tmp_path / "ghcr")
    # Bytes another upstream brought are a miss for this one: it must serve them itself
    # (once each) before its clients read them; the store still keeps one file per digest.
    assert sorted(e.path.rsplit("/", 1)[-1] for e in two.ghcr.blob_gets()) == sorted(
        on_ghcr.blob_digests
    )
    stored = two.mirror.stored_files()
    assert on_hub.blob_digests <= set(stored)
    two.ghcr.reset()
    pull_dir(f"{two.mirror.host}/ghcr.io/org/shared:v1", tmp_path / "ghcr-again")
    assert two.ghcr.blob_gets() == []

    catalog = json.loads(http_request("GET", f"{two.mirror.url}/v2/_catalog").body)
    assert "library/shared" in catalog["repositories"]
    assert "ghcr.io/org/shared" in catalog["repositories"]
    only_ghcr = json.loads(http_request("GET", f"{two.mirror.url}/v2/_catalog?ns=ghcr.io").body)
    assert only_ghcr["repositories"] == ["org/shared"]


def test_cached_blob_is_not_served_through_an_upstream_that_does_not_have_it(
    two: TwoUpstreams, images, tmp_path: Path
) -> None:
    image: PushedImage = images.oci_small  # only on the docker.io upstream
    pull_dir(image.on(two.mirror.host), tmp_path / "hub")
    layer = image.source.layer_digests[0]
    assert layer in two.mirror.stored_files()

    resp = http_request("GET", f"{two.mirror.url}/v2/ghcr.io/org/app/blobs/{layer}")
    assert resp.status == 404
    assert json.loads(resp.body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    asked = two.ghcr.requests(path_contains=layer)
    assert [x.method for x in asked] == ["GET"]  # a miss for ghcr.io: only its bytes count
    by_digest = http_request("GET", f"{two.mirror.url}/v2/ghcr.io/org/app/manifests/{image.digest}")
    assert by_digest.status == 404
    assert json.loads(by_digest.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
