"""An upstream that rate-limits (Docker Hub's 429 with Retry-After and ratelimit headers)."""

from __future__ import annotations

import json

import pytest

from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_HUB_429 = {
    "Retry-After": "30",
    "ratelimit-limit": "100;w=21600",
    "ratelimit-remaining": "0;w=21600",
}


def test_429_serves_cached_tags_passes_retry_after_on_and_backs_off(
    images, image_factory, mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    cached = images.oci_small
    uncached = image_factory("library/not-yet")
    tag_url = f"{mirror.url}/v2/{cached.repo}/manifests/{cached.tag}"
    assert http_request("GET", tag_url, headers={"Accept": OCI_MANIFEST}).status == 200

    upstream_proxy.fail_status = 429
    upstream_proxy.fail_headers = dict(DOCKER_HUB_429)
    upstream_proxy.reset()

    stale = http_request("GET", tag_url, headers={"Accept": OCI_MANIFEST})
    assert stale.status == 200
    assert stale.header("Docker-Content-Digest") == cached.digest

    cold_url = f"{mirror.url}/v2/{uncached.repo}/manifests/{uncached.tag}"
    for _ in range(10):
        cold = http_request("GET", cold_url, headers={"Accept": OCI_MANIFEST})
        assert cold.status == 429
        assert json.loads(cold.body)["errors"][0]["code"] == "TOOMANYREQUESTS"
        retry_after = int(cold.header("Retry-After") or 0)
        assert 1 <= retry_after <= 30
    blob = http_request(
        "GET", f"{mirror.url}/v2/{uncached.repo}/blobs/{uncached.source.layer_digests[0]}"
    )
    assert blob.status == 429

    # One 429 was enough: the mirror left the upstream alone for the Retry-After window
    # while 11 more requests arrived (and served the cached tag meanwhile).
    assert len(upstream_proxy.requests()) == 1
    log = mirror.log_text()
    assert "answered 429" in log and "0 pulls remaining" in log
    assert http_request("GET", tag_url, headers={"Accept": OCI_MANIFEST}).status == 200
    assert len(upstream_proxy.requests()) == 1


def test_429_without_retry_after_still_backs_off(
    image_factory, mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/limited")
    upstream_proxy.fail_status = 429
    url = f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}"
    statuses = [http_request("GET", url).status for _ in range(5)]
    assert statuses == [429] * 5
    assert len(upstream_proxy.requests()) == 1
