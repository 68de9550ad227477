"""Eviction by age (TTL from the last access) and by size (mirror.maxsize, LRU), in the
server and offline (``pullthrough gc``)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import MiB
from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, http_request, wait_until
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP = 50 * MiB


def _du(path: Path) -> int:
    """Bytes on disk under ``path``, as ``du`` counts them."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _pull_blobs(mirror: MirrorProcess, image: PushedImage) -> None:
    for digest in sorted(image.blob_digests):
        resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{digest}", timeout=60)
        assert resp.status == 200
        assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == digest


def test_store_stays_under_maxsize_evicting_least_recently_used(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    images = [image_factory(f"library/lru-{n}", layers=(12 * MiB,)) for n in range(12)]  # 3x cap
    mirror = mirror_factory(
        upstream_proxy.url, config={"mirror": {"maxsize": "50MiB", "gc_interval": "1s"}}
    )
    sizes: list[int] = []
    for image in images:
        _pull_blobs(mirror, image)
        time.sleep(0.3)
        sizes.append(_du(mirror.root / "blobs"))
    wait_until(lambda: _du(mirror.root / "blobs") <= CAP, timeout=10, message="store under cap")
    print(
        f"\nstore size (MiB) after each 12 MiB pull, cap 50: {[round(s / MiB, 1) for s in sizes]}"
    )
    assert max(sizes) <= CAP + 13 * MiB  # at most one pull above the cap before its sweep

    upstream_proxy.reset()
    _pull_blobs(mirror, images[-1])  # most recently pulled: still cached
    assert upstream_proxy.blob_gets() == []
    _pull_blobs(mirror, images[0])  # the oldest went: refetched on demand, correct bytes
    assert len(upstream_proxy.blob_gets()) >= 1
    assert "evicted for size" in mirror.log_text()


def test_pulls_running_during_sweeps_complete_with_correct_bytes(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    images = [image_factory(f"library/busy-{n}", layers=(10 * MiB,)) for n in range(8)]
    mirror = mirror_factory(
        upstream_proxy.url, config={"mirror": {"maxsize": "25MiB", "gc_interval": "0.2s"}}
    )
    errors: list[str] = []

    def puller(mine: list[PushedImage]) -> None:
        try:
            for _ in range(3):
                for image in mine:
                    _pull_blobs(mirror, image)
        except AssertionError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=puller, args=(images[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert "evicted for size" in mirror.log_text()


def test_ttl_counts_from_the_last_access(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    kept, dropped = image_factory("library/kept"), image_factory("library/dropped")
    mirror = mirror_factory(
        upstream_proxy.url, config={"proxy": {"ttl": "3s"}, "mirror": {"gc_interval": "0.5s"}}
    )
    _pull_blobs(mirror, kept)
    _pull_blobs(mirror, dropped)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # keep using one image for longer than the TTL
        _pull_blobs(mirror, kept)
        time.sleep(0.5)
    stored = mirror.stored_files()
    assert kept.blob_digests <= set(stored)
    assert not dropped.blob_digests & set(stored)
    upstream_proxy.reset()
    _pull_blobs(mirror, dropped)  # refetched on demand
    assert len(upstream_proxy.blob_gets()) == len(dropped.blob_digests)


def test_serving_a_manifest_keeps_what_it_references(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    """A client that has the layers already asks only for the manifest (docker, containerd):
    the layers are in use all the same and must not expire under it."""
    image = image_factory("library/in-use", layers=(256 * 1024, 128 * 1024))
    mirror = mirror_factory(
        upstream_proxy.url, config={"proxy": {"ttl": "3s"}, "mirror": {"gc_interval": "0.5s"}}
    )
    _pull_blobs(mirror, image)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # longer than the TTL, by tag and by digest
        for ref in (image.tag, image.digest):
            resp = http_request(
                "GET",
                f"{mirror.url}/v2/{image.repo}/manifests/{ref}",
                headers={"Accept": image.media_type},
            )
            assert resp.status == 200
        time.sleep(0.5)
    stored = set(mirror.stored_files())
    assert image.digest in stored
    assert image.blob_digests <= stored, "layers of a manifest in use expired"


def test_gc_command_offline_with_dry_run(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    image = image_factory("library/old", layers=(MiB,))
    mirror = mirror_factory(upstream_proxy.url)
    _pull_blobs(mirror, image)
    mirror.stop()
    # A shorter TTL in the config applies to content already stored.
    config = mirror.config_path.read_text().replace("remoteurl:", "ttl: 1s\n  remoteurl:")
    short = tmp_path / "short-ttl.yml"
    short.write_text(config)
    time.sleep(1.5)

    def gc(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pullthrough", "gc", str(short), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    dry = gc("--dry-run")
    assert f"would remove {len(image.blob_digests)} objects" in dry
    assert image.blob_digests <= set(mirror.stored_files())
    done = gc()
    assert f"removed {len(image.blob_digests)} objects" in done
    assert not image.blob_digests & set(mirror.stored_files())
