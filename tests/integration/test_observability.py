"""The debug server: /debug/health and Prometheus metrics after real pulls."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.support.images import pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import free_port, http_request, metrics_of
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def observed(mirror_factory, upstream_proxy: RecordingProxy) -> tuple[MirrorProcess, str]:
    port = free_port()
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}}},
    )
    return mirror, f"http://127.0.0.1:{port}"


def test_metrics_count_hits_misses_and_bytes(observed, images, tmp_path: Path) -> None:
    mirror, debug = observed
    image = images.oci_small
    blob_bytes = sum(image.source.blob_file(d).stat().st_size for d in image.blob_digests)
    pull_dir(image.on(mirror.host), tmp_path / "first")
    pull_dir(image.on(mirror.host), tmp_path / "second")
    m = metrics_of(debug)
    print("\n" + "\n".join(f"{k} {v:g}" for k, v in m.items() if k.startswith("pullthrough_")))
    blobs = len(image.blob_digests)
    assert m['pullthrough_cache_total{kind="blob",result="miss",upstream="docker.io"}'] == blobs
    assert m['pullthrough_cache_total{kind="blob",result="hit",upstream="docker.io"}'] == blobs
    assert m['pullthrough_upstream_bytes_total{upstream="docker.io"}'] == blob_bytes
    assert m['pullthrough_served_bytes_total{source="cache"}'] == blob_bytes
    assert m['pullthrough_served_bytes_total{source="fetch"}'] == blob_bytes
    assert m['pullthrough_tag_revalidations_total{upstream="docker.io"}'] >= 2
    assert m["pullthrough_fetches_in_flight"] == 0
    assert m['pullthrough_requests_total{kind="blob",method="GET",status="200"}'] == 2 * blobs


def test_health_reports_checks_and_fails_when_the_store_is_not_writable(
    observed, images, upstream_proxy: RecordingProxy
) -> None:
    mirror, debug = observed
    assert (
        http_request("GET", f"{mirror.url}/v2/{images.oci_small.repo}/manifests/v1").status == 200
    )
    resp = http_request("GET", f"{debug}/debug/health")
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert doc["status"] == "ok"
    assert doc["checks"]["storage"]["ok"] and doc["checks"]["index"]["ok"]
    assert doc["checks"]["upstreams"]["docker.io"]["last_ok"]

    upstream_proxy.stop()
    http_request("GET", f"{mirror.url}/v2/library/nothing/manifests/v1")
    doc = json.loads(http_request("GET", f"{debug}/debug/health").body)
    assert "could not be reached" in doc["checks"]["upstreams"]["docker.io"]["last_error"]
    upstream_proxy.start()

    tmp = mirror.root / "tmp"
    shutil.rmtree(tmp)
    tmp.write_text("not a directory any more")  # root ignores permissions; this it cannot
    try:
        broken = http_request("GET", f"{debug}/debug/health")
        assert broken.status == 503
        assert json.loads(broken.body)["checks"]["storage"]["ok"] is False
    finally:
        tmp.unlink()
        tmp.mkdir()


def test_a_client_hanging_up_mid_blob_is_no_500_and_no_traceback(
    observed, image_factory
) -> None:
    """Found by scripts/soak.py: a client that closed the connection while a stored blob was
    being sent made the last write fail; the error escaped the handler, so aiohttp logged it
    with a traceback and the request was counted as a 500 (the client got nothing of it)."""
    mirror, debug = observed
    image = image_factory("soak/hangup", layers=(4 * 1024 * 1024,))
    layer = max(image.blob_digests, key=lambda d: image.source.blob_file(d).stat().st_size)
    path = f"/v2/{image.repo}/blobs/{layer}"
    assert http_request("GET", mirror.url + path, timeout=30).status == 200  # now stored
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)  # the last sends fail after the client has gone
    statuses = {k for k, v in metrics_of(debug).items() if "pullthrough_requests_total" in k and v}
    assert not [s for s in statuses if 'status="500"' in s], statuses
    assert "Traceback" not in mirror.log_text()
