"""``kill -9`` in the middle of a fetch leaves nothing that could be served."""

from __future__ import annotations

import hashlib
import http.client
import time

import pytest

from tests.support import MiB
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request, wait_until
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kill_9_mid_fetch_then_restart_serves_only_verified_bytes(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/crashy", layers=(32 * MiB,))
    layer = image.source.layer_digests[0]
    path = f"/v2/{image.repo}/blobs/{layer}"
    upstream_proxy.blob_rate = 8 * MiB  # about 4 s for the whole blob

    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read(MiB)

    def partial_temp_file() -> bool:
        temps = list((mirror.root / "tmp").iterdir())
        return bool(temps) and temps[0].stat().st_size >= 4 * MiB

    wait_until(partial_temp_file, timeout=20, message="a partial fetch on disk")
    mirror.kill()
    conn.close()
    assert layer not in mirror.stored_files()  # the partial file never got a blob's name

    upstream_proxy.blob_rate = None
    mirror.start()
    assert list((mirror.root / "tmp").iterdir()) == []  # the crash's leftovers are gone
    head = http_request("HEAD", f"{mirror.url}{path}")
    assert head.status == 200
    assert layer not in mirror.stored_files()  # HEAD did not download it either
    began = time.monotonic()
    body = http_request("GET", f"{mirror.url}{path}", timeout=30).body
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer
    assert time.monotonic() - began < 20
    stored = mirror.stored_files()[layer]
    assert "sha256:" + hashlib.sha256(stored.read_bytes()).hexdigest() == layer
