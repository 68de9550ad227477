"""An upstream that was down is used again the moment it is back, and a busy mirror is
not a down upstream: the circuit breaker, the download cap and abandoned downloads.

A real registry upstream behind the suite's fault proxy; the proxy is stopped to refuse
connections and slowed (``blob_rate``) to make downloads that outlive their clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import pytest

from tests.support import KiB
from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import LOOPBACK, HTTPResponse, free_port, http_request
from tests.support.proxy import RecordingProxy
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

FAST = {"upstream_connect_timeout": "1s", "upstream_read_timeout": "5s"}
# Three refused requests open the circuit (upstream.breaker.FAILURES).
OPENING_FAILURES = 3


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _code(resp: HTTPResponse) -> str:
    return str(json.loads(resp.body)["errors"][0]["code"])


def _debugged(mirror_factory, upstream_proxy: RecordingProxy, **mirror: object):
    port = free_port()
    config = {
        "mirror": {**FAST, **mirror},
        "http": {"debug": {"addr": f"{LOOPBACK}:{port}", "prometheus": {"enabled": True}}},
    }
    return mirror_factory(upstream_proxy.url, config=config), f"http://{LOOPBACK}:{port}"


def _circuit(debug: str) -> str:
    health = json.loads(http_request("GET", f"{debug}/debug/health").body)
    return str(health["checks"]["upstreams"]["docker.io"]["circuit"])


def _metric(debug: str, series: str) -> float | None:
    for line in http_request("GET", f"{debug}/metrics").body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def _wait_metric(debug: str, series: str, at_least: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (_metric(debug, series) or 0) < at_least:
        assert time.monotonic() < deadline, f"{series} < {at_least} after {timeout}s"
        time.sleep(0.1)


def _blob_get(mirror: MirrorProcess, repo: str, digest: str, timeout: float = 30) -> HTTPResponse:
    return http_request("GET", f"{mirror.url}/v2/{repo}/blobs/{digest}", timeout=timeout)


def _open_circuit(mirror: MirrorProcess, image: PushedImage) -> None:
    for _ in range(OPENING_FAILURES):
        resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
        assert resp.status == 503 and _code(resp) == "UNAVAILABLE"


def _push_blobs(registry: Registry, repo: str, count: int, size: int) -> list[str]:
    """``count`` random blobs of ``size`` bytes pushed straight into ``repo`` (no image)."""
    digests = []
    for _ in range(count):
        data = os.urandom(size)
        digest = _sha(data)
        started = http_request("POST", f"{registry.url}/v2/{repo}/blobs/uploads/", data=b"")
        assert started.status == 202, started.body
        location = started.header("Location")
        assert location is not None
        if location.startswith("/"):
            location = registry.url + location
        sep = "&" if "?" in location else "?"
        done = http_request(
            "PUT",
            f"{location}{sep}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status == 201, done.body
        digests.append(digest)
    return digests


@contextmanager
def _started_gets(mirror: MirrorProcess, repo: str, digests: list[str]) -> Iterator[None]:
    """Blob GETs sent on raw connections that read nothing; closed (the clients hang up)
    when the block ends."""
    with ExitStack() as stack:
        for digest in digests:
            sock = stack.enter_context(socket.create_connection((LOOPBACK, mirror.port), 10))
            sock.sendall(
                f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {mirror.host}\r\n\r\n".encode()
            )
        yield


# --- point 1: the circuit breaker ------------------------------------------------------


def test_uncached_get_right_after_the_upstream_is_back_succeeds(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/comeback", layers=(256 * KiB,))
    layer = image.source.layer_digests[0]
    mirror, _ = _debugged(mirror_factory, upstream_proxy)
    upstream_proxy.stop()
    _open_circuit(mirror, image)
    began = time.monotonic()
    still_down = _blob_get(mirror, image.repo, layer)
    assert still_down.status == 503 and time.monotonic() - began < 3  # fails fast
    upstream_proxy.start()
    back = time.monotonic()
    resp = _blob_get(mirror, image.repo, layer)  # sent at once: well within 0.5 s
    took = time.monotonic() - back
    assert resp.status == 200, resp.body
    assert _sha(resp.body) == layer
    print(f"\nfirst uncached GET after the upstream came back: 200 in {took:.3f}s")


def test_one_refused_connection_does_not_fail_the_next_request(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/blip", layers=(64 * KiB,))
    mirror, debug = _debugged(mirror_factory, upstream_proxy)
    upstream_proxy.stop()
    refused = http_request("HEAD", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
    assert refused.status == 503
    upstream_proxy.start()
    head = http_request(
        "HEAD", f"{mirror.url}/v2/{image.repo}/blobs/{image.source.layer_digests[0]}"
    )
    assert head.status == 200
    assert _circuit(debug) == "closed"


def test_health_and_metrics_show_the_circuit_state(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/watched", layers=(64 * KiB,))
    mirror, debug = _debugged(mirror_factory, upstream_proxy)
    series = 'pullthrough_upstream_circuit{state="%s",upstream="docker.io"}'
    assert _circuit(debug) == "closed"
    assert _metric(debug, series % "closed") == 1
    upstream_proxy.stop()
    _open_circuit(mirror, image)
    assert _circuit(debug) == "open"
    assert _metric(debug, series % "open") == 1
    assert _metric(debug, series % "closed") == 0
    upstream_proxy.start()
    resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
    assert resp.status == 200
    assert _circuit(debug) == "closed"
    assert _metric(debug, series % "closed") == 1
    assert _metric(debug, series % "half-open") == 0


# --- point 2: a busy mirror is not a down upstream -------------------------------------


def test_abandoned_downloads_neither_starve_nor_mark_the_upstream_down(
    upstream: Registry, images, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    cached = images.oci_small
    mirror, debug = _debugged(mirror_factory, upstream_proxy)
    tag_url = f"{mirror.url}/v2/{cached.repo}/manifests/{cached.tag}"
    assert http_request("GET", tag_url).status == 200
    repo = "library/abandoned"
    slow = _push_blobs(upstream, repo, 100, 256 * KiB)
    (small,) = _push_blobs(upstream, repo, 1, 1 * KiB)
    upstream_proxy.blob_rate = 16 * KiB  # 16 s per blob: they outlive their clients
    with _started_gets(mirror, repo, slow):
        # All 100 fetches begun, and as many as the default cap (64) receiving bytes.
        _wait_metric(debug, "pullthrough_fetches_in_flight", 100)
        _wait_metric(debug, 'pullthrough_upstream_bytes_total{upstream="docker.io"}', 64 * 64 * KiB)
    # Every client has hung up; 64 or more downloads are still in flight.

    def timed(call):  # type: ignore[no-untyped-def]
        began = time.monotonic()
        resp = call()
        return resp, time.monotonic() - began

    with ThreadPoolExecutor(2) as pool:
        tag = pool.submit(timed, lambda: http_request("GET", tag_url, timeout=30))
        blob = pool.submit(timed, lambda: _blob_get(mirror, repo, small))
        (tag_resp, tag_took), (blob_resp, blob_took) = tag.result(), blob.result()
    print(f"\ncached tag: {tag_resp.status} in {tag_took:.3f}s; ", end="")
    print(f"uncached 1 KiB blob: {blob_resp.status} in {blob_took:.3f}s")
    assert tag_resp.status == 200 and tag_took < 5
    assert blob_resp.status == 200 and blob_took < 5, blob_resp.body
    assert _sha(blob_resp.body) == small
    assert _circuit(debug) == "closed"
    # The downloads nobody reads are cancelled, their slots and temp files freed.
    deadline = time.monotonic() + 20
    while _metric(debug, "pullthrough_fetches_in_flight") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(debug, "pullthrough_fetches_in_flight") == 0
    assert _metric(debug, 'pullthrough_upstream_downloads{upstream="docker.io"}') == 0
    assert not [p for p in (mirror.root / "tmp").iterdir() if not p.name.startswith("health")]
    assert "every client went away" in mirror.log_text()


def test_a_download_stalled_upstream_is_cancelled_as_soon_as_its_only_client_hangs_up(
    upstream: Registry, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    """The client's reader is waiting for bytes that do not come; its hang-up must still
    reach the fetch at once (not when the stall window next resumes the download), so the
    download is cancelled and its slot and temp file freed."""
    mirror, debug = _debugged(
        mirror_factory,
        upstream_proxy,
        upstream_read_timeout="60s",
        upstream_stall_timeout="60s",
        upstream_stall_budget="120s",
    )
    repo = "library/stalled-then-left"
    (blob,) = _push_blobs(upstream, repo, 1, 1024 * KiB)
    upstream_proxy.stall_body_after = 256 * KiB
    upstream_proxy.stall_body_seconds = 90.0  # outlasts the test; the proxy's stop ends it
    with _started_gets(mirror, repo, [blob]):
        _wait_metric(debug, 'pullthrough_upstream_bytes_total{upstream="docker.io"}', 256 * KiB)
        assert _metric(debug, "pullthrough_fetches_in_flight") == 1
    hung_up = time.monotonic()
    deadline = hung_up + 10
    while _metric(debug, "pullthrough_fetches_in_flight") and time.monotonic() < deadline:
        time.sleep(0.1)
    took = time.monotonic() - hung_up
    print(f"\nstalled download cancelled {took:.2f}s after its client hung up")
    assert _metric(debug, "pullthrough_fetches_in_flight") == 0
    assert "every client went away" in mirror.log_text()
    assert not [p for p in (mirror.root / "tmp").iterdir() if not p.name.startswith("health")]


def test_downloads_beyond_the_cap_get_503_with_retry_after(
    upstream: Registry, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    mirror, debug = _debugged(mirror_factory, upstream_proxy, upstream_max_downloads=2)
    repo = "library/capped"
    first, second, third = _push_blobs(upstream, repo, 3, 512 * KiB)
    upstream_proxy.blob_rate = 32 * KiB
    with _started_gets(mirror, repo, [first, second]):  # clients that stay, reading slowly
        _wait_metric(debug, 'pullthrough_upstream_bytes_total{upstream="docker.io"}', 2 * 64 * KiB)
        began = time.monotonic()
        resp = _blob_get(mirror, repo, third)
        took = time.monotonic() - began
        downloading = _metric(debug, 'pullthrough_upstream_downloads{upstream="docker.io"}')
    assert resp.status == 503, resp.body[:200]
    assert downloading == 2
    assert _code(resp) == "UNAVAILABLE"
    assert "mirror.upstream_max_downloads" in json.loads(resp.body)["errors"][0]["message"]
    retry_after = resp.header("Retry-After")
    assert retry_after is not None and int(retry_after) >= 1
    assert took < 10  # a bounded wait for a slot, not a queue
    assert upstream_proxy.count("GET", third) == 0
    assert _circuit(debug) == "closed"  # a full mirror is not a down upstream
    refused = 'pullthrough_upstream_refused_total{reason="downloads",upstream="docker.io"}'
    assert _metric(debug, refused) == 1
