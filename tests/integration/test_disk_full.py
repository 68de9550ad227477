"""A full disk never fails a pull: the mirror streams from the upstream without keeping the
object, says so once per interval, counts it, and its SQLite index stays sound."""

from __future__ import annotations

import hashlib
import http.client
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pullthrough.mirror.fetches import FULL_BACKOFF
from tests.support import MiB
from tests.support.images import pull_dir
from tests.support.net import free_port, http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, unmounted at teardown."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        # -n: no record in /run/mount/utab, which would create /run/mount on the machine.
        ["mount", "-n", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-n", "-l", str(mountpoint)], check=False)


def _metric(debug: str, name: str) -> float:
    text = http_request("GET", f"{debug}/metrics").body.decode()
    return sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name)
    )


def test_blob_larger_than_the_free_space_is_served_without_being_kept(
    small_disk: Path,
    image_factory,
    mirror_factory,
    upstream_proxy: RecordingProxy,
    tmp_path: Path,
) -> None:
    image = image_factory("library/huge", layers=(96 * MiB,))  # more than the whole disk
    layer = image.source.layer_digests[0]
    port = free_port()
    mirror = mirror_factory(
        upstream_proxy.url,
        config={
            "storage": {"filesystem": {"rootdirectory": str(small_disk / "data")}},
            "http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}},
        },
    )
    debug = f"http://127.0.0.1:{port}"

    # Three clients at once, then a whole skopeo pull: every byte right, nothing kept.
    results: list[str] = []

    def get() -> None:
        conn = http.client.HTTPConnection(mirror.host, timeout=60)
        conn.request("GET", f"/v2/{image.repo}/blobs/{layer}")
        resp = conn.getresponse()
        results.append("sha256:" + hashlib.sha256(resp.read()).hexdigest())
        conn.close()

    threads = [threading.Thread(target=get) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [layer] * 3
    pull_dir(image.on(mirror.host), tmp_path / "pulled")
    data = (tmp_path / "pulled" / layer.split(":")[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer

    assert layer not in mirror.stored_files()
    assert list((small_disk / "data" / "tmp").iterdir()) == []
    assert _metric(debug, "pullthrough_passthrough_bytes_total") >= 96 * MiB
    log = mirror.log_text()
    assert log.count("without keeping it; see pullthrough_passthrough_bytes") == 1

    mirror.stop()
    db = sqlite3.connect(small_disk / "data" / "index.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_small_blobs_are_still_kept_next_to_a_full_one(
    small_disk: Path, image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    small = image_factory("library/small-one", layers=(MiB,))
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"storage": {"filesystem": {"rootdirectory": str(small_disk / "data")}}},
    )
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 256 * 1024))  # leave less than the blob needs
    layer = small.source.layer_digests[0]
    resp = http_request("GET", f"{mirror.url}/v2/{small.repo}/blobs/{layer}", timeout=30)
    assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == layer
    assert layer not in mirror.stored_files()
    filler.unlink()  # space again: once the mirror's back-off after a full disk has passed,
    time.sleep(FULL_BACKOFF + 0.5)  # the next fetch is kept
    upstream_proxy.reset()
    resp = http_request("GET", f"{mirror.url}/v2/{small.repo}/blobs/{layer}", timeout=30)
    assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == layer
    assert layer in mirror.stored_files()
