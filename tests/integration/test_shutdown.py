"""SIGTERM drains transfers in flight for http.draintimeout, then cuts off what is left and
exits 0; SIGHUP reloads without stopping."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from typing import Any

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support import MiB
from tests.support.images import ImageFactory
from tests.support.registry import Registry
from tests.support.slowread import read_blob

pytestmark = pytest.mark.integration

GRACE = 2.0


def _start_reading(
    mirror_host: str, path: str, per_second: int
) -> tuple[threading.Thread, list[int], dict[str, Any]]:
    got: list[int] = [0]
    result: dict[str, Any] = {}
    reader = threading.Thread(target=read_blob, args=(mirror_host, path, per_second, got, result))
    reader.start()
    while got[0] < 2 * MiB and reader.is_alive():
        time.sleep(0.02)
    return reader, got, result


def test_sigterm_cuts_off_a_transfer_longer_than_the_grace_and_exits_0(
    mirror_factory: MirrorFactory, upstream: Registry, image_factory: ImageFactory
) -> None:
    pushed = image_factory("shutdown/slow", layers=(32 * MiB,))
    layer = pushed.source.layer_digests[0]  # type: ignore[union-attr]
    data = pushed.source.blob_file(layer).read_bytes()
    mirror = mirror_factory(upstream.url, config={"http": {"draintimeout": f"{GRACE:g}s"}})
    assert mirror.proc is not None
    # 32 MiB at 4 MiB/s: 8 s, longer than the grace.
    reader, got, result = _start_reading(mirror.host, f"/v2/shutdown/slow/blobs/{layer}", 4 * MiB)
    mirror.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = mirror.proc.wait(timeout=GRACE + 10)
    seconds = time.monotonic() - start
    reader.join(timeout=10)
    assert code == 0, mirror.log_tail(30)
    assert GRACE - 0.5 < seconds < GRACE + 2, seconds
    assert "drain: 2s grace over, cutting off 1 connection(s)" in mirror.log_tail(30)
    # A short body, never a wrong byte.
    assert "error" in result and got[0] < len(data)
    assert result["sha256"] == hashlib.sha256(data[: got[0]]).hexdigest()


def test_sigterm_lets_a_transfer_within_the_grace_finish(
    mirror_factory: MirrorFactory, upstream: Registry, image_factory: ImageFactory
) -> None:
    pushed = image_factory("shutdown/quick", layers=(8 * MiB,))
    layer = pushed.source.layer_digests[0]  # type: ignore[union-attr]
    data = pushed.source.blob_file(layer).read_bytes()
    mirror = mirror_factory(upstream.url, config={"http": {"draintimeout": "10s"}})
    assert mirror.proc is not None
    # 8 MiB at 8 MiB/s: about a second, well inside the grace.
    reader, got, result = _start_reading(mirror.host, f"/v2/shutdown/quick/blobs/{layer}", 8 * MiB)
    mirror.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = mirror.proc.wait(timeout=20)
    seconds = time.monotonic() - start
    reader.join(timeout=10)
    assert code == 0 and seconds < 5, (code, seconds, mirror.log_tail(30))
    assert "error" not in result and got[0] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()


def test_sighup_reloads_and_keeps_serving(
    mirror_factory: MirrorFactory, upstream: Registry
) -> None:
    mirror = mirror_factory(upstream.url)
    assert mirror.proc is not None
    mirror.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "mirror.policy re-read" not in mirror.log_tail(20) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The config's policy is read again (htpasswd needs no signal; no TLS here).
    assert "mirror.policy re-read from" in mirror.log_tail(20)
    assert mirror.proc.poll() is None
