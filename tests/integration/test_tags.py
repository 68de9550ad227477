"""Tag revalidation: one upstream HEAD for many concurrent clients, GET only on change."""

from __future__ import annotations

import threading

import pytest

from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def test_concurrent_requests_for_one_tag_cause_one_upstream_head(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/popular")
    url = f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}"
    assert http_request("GET", url, headers={"Accept": OCI_MANIFEST}).status == 200
    upstream_proxy.reset()
    upstream_proxy.stall_seconds = 1.0  # every revalidation takes a second upstream
    upstream_proxy.fault_path_contains = "/manifests/"

    statuses: list[int] = []
    digests: list[str | None] = []

    def pull() -> None:
        resp = http_request("GET", url, headers={"Accept": OCI_MANIFEST}, timeout=20)
        statuses.append(resp.status)
        digests.append(resp.header("Docker-Content-Digest"))

    threads = [threading.Thread(target=pull) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert statuses == [200] * 30
    assert set(digests) == {image.digest}
    manifest_requests = upstream_proxy.requests(path_contains="/manifests/")
    assert [x.method for x in manifest_requests] == ["HEAD"]


def test_tag_moved_upstream_is_fetched_again(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    first = image_factory("library/moving", tag="latest")
    url = f"{mirror.url}/v2/library/moving/manifests/latest"
    got = http_request("GET", url, headers={"Accept": OCI_MANIFEST})
    assert got.header("Docker-Content-Digest") == first.digest

    second = image_factory("library/moving", tag="latest")
    assert second.digest != first.digest
    upstream_proxy.reset()
    got = http_request("GET", url, headers={"Accept": OCI_MANIFEST})
    assert got.status == 200
    assert got.header("Docker-Content-Digest") == second.digest
    assert got.body == second.raw_manifest
    assert [x.method for x in upstream_proxy.requests(path_contains="/manifests/")] == [
        "HEAD",
        "GET",
    ]
    # The old digest stays available by digest, from the store.
    upstream_proxy.reset()
    old = http_request("GET", f"{mirror.url}/v2/library/moving/manifests/{first.digest}")
    assert old.status == 200 and old.body == first.raw_manifest
    assert upstream_proxy.requests() == []


def test_tag_freshness_window_skips_revalidation(
    image_factory,
    mirror_factory,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/fresh")
    mirror = mirror_factory(upstream_proxy.url, config={"mirror": {"tag_freshness": "1h"}})
    url = f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}"
    assert http_request("GET", url, headers={"Accept": OCI_MANIFEST}).status == 200
    upstream_proxy.reset()
    for _ in range(5):
        assert http_request("GET", url, headers={"Accept": OCI_MANIFEST}).status == 200
    assert upstream_proxy.requests() == []
