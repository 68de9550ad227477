"""A stored blob whose file changed on disk after it was verified is never served as a
success: not just after a day, not when its mtime was put back, not when it changes while
it is being sent. The client sees a failed transfer; the next request gets the upstream's
bytes again; the metrics count it."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import MiB
from tests.support.mirror import MirrorProcess
from tests.support.net import free_port, get_expecting_a_failed_transfer, http_request, metrics_of
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def observed(mirror_factory, upstream_proxy: RecordingProxy) -> tuple[MirrorProcess, str]:
    """A mirror with default verification settings (verify_interval 24h) and metrics."""
    port = free_port()
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}}},
    )
    return mirror, f"http://127.0.0.1:{port}"


def _flip_byte(path: Path, offset: int, *, restore_mtime: bool = False) -> None:
    """Flip one byte in place: same file, same size, as a bad disk or a stray write would."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if restore_mtime:
        # Put mtime back as it was: only the ctime still tells.
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert path.stat().st_size == before.st_size


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["flipped", "flipped-mtime-restored"])
def test_a_byte_flipped_in_a_stored_blob_is_never_served_and_is_fetched_again(
    image_factory,
    observed: tuple[MirrorProcess, str],
    upstream_proxy: RecordingProxy,
    restore_mtime: bool,
) -> None:
    mirror, debug = observed
    image = image_factory("library/flipped", layers=(3 * MiB,))
    layer = image.source.layer_digests[0]
    path = f"/v2/{image.repo}/blobs/{layer}"
    url = f"{mirror.url}{path}"
    good = http_request("GET", url).body  # cold: fetched and stored
    assert _sha256(good) == layer
    assert http_request("GET", url).body == good  # warm: from the store
    _flip_byte(mirror.stored_files()[layer], MiB, restore_mtime=restore_mtime)

    upstream_proxy.reset()
    get_expecting_a_failed_transfer(mirror.host, path)
    assert layer not in mirror.stored_files()  # quarantined
    assert metrics_of(debug)['pullthrough_corrupt_blobs_total{found="read"}'] == 1

    again = http_request("GET", url)
    assert again.status == 200 and again.body == good
    assert [e.path.rsplit("/", 1)[-1] for e in upstream_proxy.blob_gets()] == [layer]
    assert mirror.stored_files()[layer].read_bytes() == good  # stored again, correct


def test_a_range_of_a_changed_blob_is_answered_with_the_upstreams_bytes(
    image_factory,
    observed: tuple[MirrorProcess, str],
    upstream_proxy: RecordingProxy,
) -> None:
    mirror, debug = observed
    image = image_factory("library/flipped-range", layers=(3 * MiB,))
    layer = image.source.layer_digests[0]
    url = f"{mirror.url}/v2/{image.repo}/blobs/{layer}"
    good = http_request("GET", url).body
    assert http_request("GET", url).body == good
    _flip_byte(mirror.stored_files()[layer], MiB + 10)

    upstream_proxy.reset()
    # The range holds the changed byte; the whole file is hashed before any header goes out.
    got = http_request("GET", url, headers={"Range": f"bytes={MiB}-{2 * MiB - 1}"})
    assert got.status == 206
    assert got.body == good[MiB : 2 * MiB]
    assert metrics_of(debug)['pullthrough_corrupt_blobs_total{found="read"}'] == 1
    assert len(upstream_proxy.blob_gets()) == 1  # answered from a fresh fetch
    assert http_request("GET", url).body == good


def test_a_blob_changed_while_it_is_being_sent_is_not_completed(
    image_factory,
    observed: tuple[MirrorProcess, str],
    upstream_proxy: RecordingProxy,
) -> None:
    mirror, debug = observed
    size = 48 * MiB  # far more than loopback socket buffers hold: the send must wait for us
    image = image_factory("library/changing", layers=(size,))
    layer = image.source.layer_digests[0]
    path = f"/v2/{image.repo}/blobs/{layer}"
    good = http_request("GET", f"{mirror.url}{path}", timeout=60).body
    assert http_request("GET", f"{mirror.url}{path}", timeout=60).body == good  # trusted now
    stored = mirror.stored_files()[layer]

    def get_while(change: Callable[[], None]) -> bytes:
        conn = http.client.HTTPConnection(mirror.host, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200
            head = resp.read(MiB)  # the stream is under way, by sendfile
            time.sleep(0.3)
            change()
            return head + resp.read()
        finally:
            conn.close()

    # Only the ctime changes (as when eviction renames the file under a reader): the file
    # is hashed again, still matches, and the transfer completes.
    assert get_while(lambda: stored.chmod(0o600)) == good
    # A byte not sent yet is flipped: the transfer is never completed.
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        get_while(lambda: _flip_byte(stored, size - MiB))
    assert metrics_of(debug)['pullthrough_corrupt_blobs_total{found="read"}'] == 1

    upstream_proxy.reset()
    assert http_request("GET", f"{mirror.url}{path}", timeout=60).body == good
    assert len(upstream_proxy.blob_gets()) == 1


def test_the_background_scrub_finds_rot_no_read_asked_for(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    port = free_port()
    debug = f"http://127.0.0.1:{port}"
    mirror = mirror_factory(
        upstream_proxy.url,
        config={
            "http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}},
            "mirror": {"verify_interval": "1s", "scrub_rate": "50MB/s"},
        },
    )
    image = image_factory("library/scrubbed", layers=(2 * MiB,))
    layer = image.source.layer_digests[0]
    url = f"{mirror.url}/v2/{image.repo}/blobs/{layer}"
    good = http_request("GET", url).body
    mirror.stop()
    _flip_byte(mirror.stored_files()[layer], MiB)  # while stopped: no read will see it
    mirror.start()

    deadline = time.monotonic() + 20
    while layer in mirror.stored_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert layer not in mirror.stored_files()
    m = metrics_of(debug)
    assert m['pullthrough_corrupt_blobs_total{found="scrub"}'] == 1
    assert m["pullthrough_scrubbed_bytes_total"] >= 2 * MiB
    assert "scrub: stored" in mirror.log_text()

    upstream_proxy.reset()
    assert http_request("GET", url).body == good
    assert len(upstream_proxy.blob_gets()) == 1
