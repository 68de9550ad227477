"""An upstream that stops sending mid-blob is noticed within the stall window, resumed with
Range from the last byte written, and given up on once the stall budget is spent; one that
is slow but keeps sending is never cut off.

Real ``pullthrough serve`` processes in front of the session's distribution registry, seen
through the fault proxy. Most tests configure a short window to stay fast; one runs on the
defaults (10 s window, 25 s budget, 30 s read time-out), as an operator would.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import KiB, MiB
from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import HTTPResponse, free_port, http_request, metrics_of
from tests.support.proxy import RecordingProxy, exchanges_summary

pytestmark = pytest.mark.integration

# Longer than any stall window or budget here: the proxy's pause outlasts the mirror's
# patience (the proxy cancels it when it stops at teardown).
FOREVER = 60.0
HUB = 'upstream="docker.io"'


@dataclass
class Got:
    blob: HTTPResponse | None  # None: the mirror aborted the transfer
    seconds: float


def _get_blob(mirror: MirrorProcess, image: PushedImage, *, timeout: float = 90) -> Got:
    began = time.monotonic()
    url = f"{mirror.url}/v2/{image.repo}/blobs/{_layer(image)}"
    try:
        blob: HTTPResponse | None = http_request("GET", url, timeout=timeout)
    except (OSError, http.client.HTTPException):
        blob = None
    return Got(blob, time.monotonic() - began)


def _layer(image: PushedImage) -> str:
    return image.source.layer_digests[0]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _observed(
    mirror_factory: Any, proxy: RecordingProxy, mirror: dict[str, Any]
) -> tuple[MirrorProcess, str]:
    """A mirror with ``mirror:`` settings and its Prometheus metrics on a debug port."""
    port = free_port()
    debug = {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}
    made = mirror_factory(proxy.url, config={"mirror": mirror, "http": {"debug": debug}})
    return made, f"http://127.0.0.1:{port}"


def _range_starts(proxy: RecordingProxy, digest: str) -> list[int]:
    """Where the answered (206) Range GETs of ``digest`` started."""
    return [
        int(value.removeprefix("bytes=").removesuffix("-"))
        for e in proxy.requests("GET", digest)
        for value in e.request_header("Range")
        if e.status == 206
    ]


def _resumed_at(mirror: MirrorProcess) -> list[int]:
    """The offsets the mirror's log says it resumed from (bytes written and hashed)."""
    return [
        int(line.split(" at byte ")[1].split()[0])
        for line in mirror.log_text().splitlines()
        if "resuming sha256:" in line
    ]


def test_blob_stalling_after_every_mib_is_complete_within_30s_on_defaults(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    """Issue 14.4's measurement: every blob GET stops after 1 MiB. On the read time-out
    alone this took 60.1 s (30 s, twice); the stall window resumes after 10 s each."""
    # Under 3 MiB in all (the layer's tar adds headers): the third request's body ends
    # before the proxy's 1 MiB mark, so it takes exactly two stalls whatever sizes the
    # proxy's reads come in (at 3 MiB and over, a third stall could fall on the last bytes).
    image = image_factory("library/stall-defaults", layers=(3 * MiB - 64 * KiB,))
    # The defaults an operator gets (the suite's mirrors otherwise read with 10 s).
    mirror = mirror_factory(upstream_proxy.url, config={"mirror": {"upstream_read_timeout": "30s"}})
    upstream_proxy.stall_body_after = MiB
    upstream_proxy.stall_body_seconds = FOREVER
    got = _get_blob(mirror, image)
    print(f"\nstall after every MiB, defaults: complete blob after {got.seconds:.1f}s")
    assert got.blob is not None and got.blob.status == 200
    assert _sha(got.blob.body) == _layer(image)
    assert got.seconds < 30
    # Two stalls, two resumes, each from the bytes written so far (at least the 1 MiB
    # each request delivered). A stalled exchange is recorded only when the proxy's pause
    # ends, so only the last resume is in the record yet.
    resumed = _resumed_at(mirror)
    assert len(resumed) == 2 and resumed[0] >= MiB and resumed[1] >= resumed[0] + MiB
    starts = _range_starts(upstream_proxy, _layer(image))
    assert starts == resumed[1:], exchanges_summary(upstream_proxy.requests("GET", _layer(image)))
    assert _layer(image) in mirror.stored_files()


def test_stall_that_happens_once_is_resumed_from_the_last_byte_written(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    # 1.5 MiB: the resumed request's body (0.5 MiB) ends before the proxy's 1 MiB mark.
    image = image_factory("library/stall-once", layers=(MiB + MiB // 2,))
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"mirror": {"upstream_stall_timeout": "1s", "upstream_stall_budget": "3s"}},
    )
    upstream_proxy.stall_body_after = MiB
    upstream_proxy.stall_body_seconds = FOREVER
    got = _get_blob(mirror, image)
    assert got.blob is not None and got.blob.status == 200
    assert _sha(got.blob.body) == _layer(image)
    # The 10 s read time-out would have taken 10 s; the 1 s window takes about 1 s.
    assert got.seconds < 5
    resumed = _resumed_at(mirror)
    assert len(resumed) == 1 and resumed[0] >= MiB  # all the proxy sent before it paused
    assert _range_starts(upstream_proxy, _layer(image)) == resumed
    assert mirror.stored_files()[_layer(image)].read_bytes() == got.blob.body
    assert "resuming" in mirror.log_text()


def test_upstream_that_keeps_stalling_is_a_clean_abort_once_the_budget_is_spent(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/stall-always", layers=(4 * MiB,))
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"mirror": {"upstream_stall_timeout": "500ms", "upstream_stall_budget": "1200ms"}},
    )
    upstream_proxy.stall_body_after = MiB
    upstream_proxy.stall_body_seconds = FOREVER
    got = _get_blob(mirror, image)
    # Stalls of 0.5, 0.5 and the 0.2 s left of the budget at 1, 2 and 3 MiB, then the
    # transfer is aborted: the client never sees a complete 200 for an incomplete blob.
    assert got.blob is None, got.blob
    assert got.seconds < 1.2 + 3
    assert _layer(image) not in mirror.stored_files()
    assert "gave up" in mirror.log_text()
    # Once the upstream behaves, the next request starts afresh and completes.
    upstream_proxy.clear_faults()
    again = _get_blob(mirror, image)
    assert again.blob is not None and _sha(again.blob.body) == _layer(image)


def test_slow_but_moving_upstream_is_never_cut_off(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/stall-slow", layers=(200 * KiB,))
    mirror, debug = _observed(
        mirror_factory,
        upstream_proxy,
        {"upstream_stall_timeout": "1s", "upstream_stall_budget": "1s"},
    )
    upstream_proxy.chunk_size = 8 * KiB  # a byte every 0.16 s, as a steady stream sends
    upstream_proxy.blob_rate = 50 * KiB
    got = _get_blob(mirror, image)
    assert got.blob is not None and got.blob.status == 200
    assert _sha(got.blob.body) == _layer(image)
    assert got.seconds > 3  # it did take about 4 s, longer than window and budget together
    gets = upstream_proxy.requests("GET", _layer(image))
    assert len(gets) == 1 and not gets[0].request_header("Range"), exchanges_summary(gets)
    m = metrics_of(debug)
    assert m[f"pullthrough_upstream_stalls_total{{{HUB}}}"] == 0
    assert m[f"pullthrough_upstream_resumes_total{{{HUB}}}"] == 0


def test_metrics_count_stalls_and_resumes_per_upstream(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    stalled = image_factory("library/stall-counted", layers=(MiB + MiB // 2,))
    broken = image_factory("library/stall-broken", layers=(MiB + MiB // 2,))
    mirror, debug = _observed(
        mirror_factory,
        upstream_proxy,
        {"upstream_stall_timeout": "1s", "upstream_stall_budget": "3s"},
    )
    upstream_proxy.stall_body_after = MiB
    upstream_proxy.stall_body_seconds = FOREVER
    first = _get_blob(mirror, stalled)
    assert first.blob is not None and _sha(first.blob.body) == _layer(stalled)
    m = metrics_of(debug)
    assert m[f"pullthrough_upstream_stalls_total{{{HUB}}}"] == 1
    assert m[f"pullthrough_upstream_resumes_total{{{HUB}}}"] == 1
    # A broken connection is resumed too, but it is not a stall.
    upstream_proxy.clear_faults()
    upstream_proxy.drop_after = MiB
    second = _get_blob(mirror, broken)
    assert second.blob is not None and _sha(second.blob.body) == _layer(broken)
    m = metrics_of(debug)
    assert m[f"pullthrough_upstream_stalls_total{{{HUB}}}"] == 1
    # At least one more resume: under load a second one happens when the resumed request
    # meets a pooled connection the proxy had just closed (seen once in CI); still no stall.
    assert m[f"pullthrough_upstream_resumes_total{{{HUB}}}"] >= 2


def test_bytes_that_arrived_before_a_pause_reach_the_client_during_the_pause(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    """The download thread reports what it read in batches; an upstream that pauses must
    not hold back from the client what the mirror already has (a slow or bursty upstream
    would otherwise look stalled to the client too)."""
    image = image_factory("library/pause-early-bytes", layers=(MiB,))
    mirror = mirror_factory(
        upstream_proxy.url,
        config={
            "mirror": {
                "upstream_stall_timeout": "60s",
                "upstream_stall_budget": "120s",
                "upstream_read_timeout": "60s",
            }
        },
    )
    upstream_proxy.stall_body_after = 256 * KiB
    upstream_proxy.stall_body_seconds = FOREVER
    conn = http.client.HTTPConnection(mirror.host, timeout=5)
    try:
        conn.request("GET", f"/v2/{image.repo}/blobs/{_layer(image)}")
        resp = conn.getresponse()
        assert resp.status == 200
        began = time.monotonic()
        early = resp.read(192 * KiB)  # raises (socket time-out) if the bytes are held back
        took = time.monotonic() - began
    finally:
        conn.close()
    print(f"\n192 KiB of the 256 KiB sent before the pause reached the client in {took:.2f}s")
    whole = image.source.blob_file(_layer(image)).read_bytes()
    assert early == whole[: 192 * KiB]
