"""One fetch per digest: concurrent clients of an uncached blob share one upstream
download and each streams from the growing file without waiting for the whole blob."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from dataclasses import dataclass

import pytest

from tests.support import MiB
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 20
BLOB_SIZE = 200 * MiB


@dataclass
class Result:
    status: int = 0
    first_byte: float = 0.0
    done: float = 0.0
    size: int = 0
    digest: str = ""
    error: str = ""


def _get(host: str, path: str, result: Result, start: threading.Event) -> None:
    start.wait(10)
    try:
        conn = http.client.HTTPConnection(host, timeout=60)
        conn.request("GET", path)
        resp = conn.getresponse()
        result.status = resp.status
        hasher = hashlib.sha256()
        first = resp.read(64 * 1024)
        result.first_byte = time.monotonic()
        hasher.update(first)
        result.size = len(first)
        while chunk := resp.read(1024 * 1024):
            hasher.update(chunk)
            result.size += len(chunk)
        result.done = time.monotonic()
        result.digest = "sha256:" + hasher.hexdigest()
        conn.close()
    except Exception as exc:  # recorded and asserted on below
        result.error = repr(exc)


def test_twenty_concurrent_gets_of_a_cold_blob_cause_one_upstream_download(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/big", layers=(BLOB_SIZE,))
    layer = next(d for d in image.source.layer_digests)
    path = f"/v2/{image.repo}/blobs/{layer}"
    upstream_proxy.reset()

    results = [Result() for _ in range(CLIENTS)]
    start = threading.Event()
    threads = [threading.Thread(target=_get, args=(mirror.host, path, r, start)) for r in results]
    for t in threads:
        t.start()
    began = time.monotonic()
    start.set()
    for t in threads:
        t.join(120)
    wall = time.monotonic() - began

    assert [r.error for r in results if r.error] == []
    assert {r.status for r in results} == {200}
    assert {r.digest for r in results} == {layer}
    assert {r.size for r in results} == {image.source.blob_file(layer).stat().st_size}

    fetches = upstream_proxy.requests(method="GET", path_contains=layer)
    assert len(fetches) == 1, [x.as_tuple() for x in fetches]
    assert fetches[0].bytes_sent == image.source.blob_file(layer).stat().st_size
    upstream_done = fetches[0].started + fetches[0].duration
    first_bytes = sorted(r.first_byte for r in results)
    # Every client had bytes before the upstream download ended: none waited for the whole.
    assert first_bytes[-1] < upstream_done, (first_bytes[-1] - began, upstream_done - began)
    print(
        f"\n{CLIENTS} clients x {BLOB_SIZE // MiB} MiB: wall {wall:.2f}s, "
        f"upstream download {fetches[0].duration:.2f}s, "
        f"first byte median {first_bytes[len(first_bytes) // 2] - began:.3f}s, "
        f"max {first_bytes[-1] - began:.3f}s"
    )
    assert layer in mirror.stored_files()


def test_fetch_completes_and_is_stored_when_the_client_goes_away(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/abandoned", layers=(64 * MiB,))
    layer = image.source.layer_digests[0]
    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", f"/v2/{image.repo}/blobs/{layer}")
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read(1024)
    conn.close()  # the only client leaves after the first kilobyte

    deadline = time.monotonic() + 30
    while layer not in mirror.stored_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    stored = mirror.stored_files().get(layer)
    assert stored is not None
    assert "sha256:" + hashlib.sha256(stored.read_bytes()).hexdigest() == layer
    assert len(upstream_proxy.requests(method="GET", path_contains=layer)) == 1


def test_range_of_a_blob_still_being_fetched_completes_only_after_verification(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/ranged", layers=(16 * MiB,))
    layer = image.source.layer_digests[0]
    data = image.source.blob_file(layer).read_bytes()
    upstream_proxy.blob_rate = 16 * MiB  # about a second for the whole blob
    upstream_proxy.corrupt_blobs = True  # ... and its middle byte is wrong

    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", f"/v2/{image.repo}/blobs/{layer}", headers={"Range": "bytes=0-99"})
    resp = conn.getresponse()
    assert resp.status == 206
    # The first 100 bytes are right, but the blob is not: the range must not complete.
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    conn.close()

    upstream_proxy.corrupt_blobs = False
    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", f"/v2/{image.repo}/blobs/{layer}", headers={"Range": "bytes=0-99"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (206, data[:100])
    conn.close()
    assert layer in mirror.stored_files()
