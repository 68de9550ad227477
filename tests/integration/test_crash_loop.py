"""kill -9 at random points under concurrent pulls, ten times: after every restart each
stored object verifies, the index names no missing file, no temp file survives start-up,
and pulls go on."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.support import MiB
from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 10
CLIENTS = 4


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _check_store(mirror: MirrorProcess) -> int:
    files = mirror.stored_files()
    for digest, path in files.items():
        assert _sha(path) == digest, f"{path} does not verify"
    db = sqlite3.connect(mirror.root / "index.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for digest, size in db.execute("SELECT digest, size FROM blobs"):
            assert digest in files, f"index names {digest}, which is not on disk"
            assert files[digest].stat().st_size == size
    finally:
        db.close()
    return len(files)


def _client(
    mirror: MirrorProcess, images: list[PushedImage], stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        image = rng.choice(images)
        target = rng.choice([*image.blob_digests, image.tag])
        kind = "manifests" if target == image.tag else "blobs"
        try:
            http_request("GET", f"{mirror.url}/v2/{image.repo}/{kind}/{target}", timeout=10)
        except Exception:
            time.sleep(0.05)  # the mirror was killed under us; it will be back


def test_ten_kills_under_load_leave_a_consistent_store(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    images = [image_factory(f"library/crash-{n}", layers=(6 * MiB, 3 * MiB)) for n in range(3)]
    upstream_proxy.blob_rate = 24 * MiB  # fetches take a while: kills land mid-download
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url)
    rng = random.Random(1234)
    stored_counts: list[int] = []
    for round_ in range(KILLS):
        stop = threading.Event()
        clients = [
            threading.Thread(target=_client, args=(mirror, images, stop, round_ * 10 + i))
            for i in range(CLIENTS)
        ]
        for c in clients:
            c.start()
        time.sleep(rng.uniform(0.3, 2.5))
        mirror.kill()
        stop.set()
        for c in clients:
            c.join(15)
        stored_counts.append(_check_store(mirror))
        mirror.start()
        assert list((mirror.root / "tmp").iterdir()) == []

    upstream_proxy.blob_rate = None
    for image in images:
        for digest in image.blob_digests:
            resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{digest}", timeout=30)
            assert resp.status == 200
            assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == digest
    assert _check_store(mirror) >= sum(len(i.blob_digests) for i in images)
    print(f"\nobjects in store after each of {KILLS} kills: {stored_counts}")
