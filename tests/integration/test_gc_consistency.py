"""``pullthrough gc`` beside a server (running, suspended or stopped) never leaves the index
naming what the store does not hold: a pull afterwards fetches again what gc removed and
records only what it stored, and ``ls``, ``du`` and ``verify`` agree with the files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import KiB
from tests.support.images import MANIFEST_ACCEPT, PushedImage, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLEAN = "index: 0 inconsistencies"


def pullthrough(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def variant(
    mirror: MirrorProcess,
    path: Path,
    *,
    proxy: dict[str, Any] | None = None,
    mirror_keys: dict[str, Any] | None = None,
) -> Path:
    """The mirror's config with some keys changed (same store and index), for gc."""
    doc = yaml.safe_load(mirror.config_path.read_text())
    doc["proxy"].update(proxy or {})
    doc["mirror"].update(mirror_keys or {})
    path.write_text(yaml.safe_dump(doc))
    return path


def _wait_for_index_lock(path: Path, timeout: float = 5.0) -> None:
    """Wait until nobody holds the index's write lock (then let go of it at once)."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(path, timeout=0.05)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
        finally:
            db.close()
        time.sleep(0.02)


@contextmanager
def suspended(mirror: MirrorProcess) -> Iterator[None]:
    """The server stopped as a shell's Ctrl-Z stops it (SIGSTOP), then continued: its
    memory outlives whatever is done to the store meanwhile. Stopped once its downloads
    have settled and the index is free: a client has its last byte before the file is
    renamed and indexed, and a server stopped inside its index write would hold the lock
    that gc then waits for in vain (a user's Ctrl-Z can do that too; the test is about
    what gc does to a server's memory, not about that)."""
    assert mirror.proc is not None
    mirror.stored_files()
    _wait_for_index_lock(mirror.root / "index.db")
    os.kill(mirror.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(mirror.proc.pid, signal.SIGCONT)


def ghosts(mirror: MirrorProcess) -> list[str]:
    """What the index names that the store does not hold: tags naming a digest without an
    entry, entries without a file (read directly, with the server idle)."""
    db = sqlite3.connect(f"file:{mirror.root / 'index.db'}?mode=ro", uri=True)
    try:
        indexed = {row[0] for row in db.execute("SELECT digest FROM blobs")}
        tags = db.execute("SELECT repo, tag, digest FROM tags").fetchall()
    finally:
        db.close()
    files = set(mirror.stored_files())
    found = [f"tag {repo}:{tag} -> {d} (not indexed)" for repo, tag, d in tags if d not in indexed]
    found += [f"entry {d} (no file)" for d in sorted(indexed - files)]
    return found


def no_ghost_in_commands(mirror: MirrorProcess) -> None:
    """``ls`` lists only images whose manifest is stored, ``du`` counts what is on disk,
    ``verify`` finds nothing to reconcile."""
    stored = set(mirror.stored_files())
    config = str(mirror.config_path)
    for row in json.loads(ok(pullthrough("ls", config, "--json")))["images"]:
        assert row["digest"] in stored, f"ls lists {row} whose manifest file is gone"
    usage = json.loads(ok(pullthrough("du", config, "--json")))
    assert usage["total"]["objects"] == usage["disk"]["files"] == len(stored), usage
    assert usage["total"]["bytes"] == usage["disk"]["bytes"], usage
    verified = ok(pullthrough("verify", config))
    assert CLEAN in verified, verified


def _get(mirror: MirrorProcess, repo: str, kind: str, ref: str) -> bytes:
    headers = {"Accept": MANIFEST_ACCEPT} if kind == "manifests" else None
    resp = http_request("GET", f"{mirror.url}/v2/{repo}/{kind}/{ref}", headers=headers, timeout=30)
    assert resp.status == 200, f"{kind}/{ref}: {resp.status} {resp.body[:300]!r}"
    return resp.body


def pull(mirror: MirrorProcess, image: PushedImage, *, by_digest: bool) -> None:
    """Everything a client pulls for ``image``, each body checked against its digest."""

    def check(digest: str, body: bytes) -> None:
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest, f"wrong bytes: {digest}"

    check(
        image.digest,
        _get(mirror, image.repo, "manifests", image.digest if by_digest else image.tag),
    )
    for child in image.child_digests:
        check(child, _get(mirror, image.repo, "manifests", child))
    for blob in sorted(image.blob_digests):
        check(blob, _get(mirror, image.repo, "blobs", blob))


def test_pull_by_tag_after_gc_beside_a_stopped_server_fetches_again_and_leaves_no_ghost(
    image_factory: Any, mirror: MirrorProcess, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    """The report: gc (TTL 1 s) while the server is stopped removed 3 objects; a pull by
    tag afterwards re-recorded the manifest gc had deleted, and ls/du listed it."""
    image = image_factory("library/ghost")
    everything = {image.digest, *image.blob_digests}
    pull_dir(image.on(mirror.host), tmp_path / "first")
    short = variant(mirror, tmp_path / "short-ttl.yml", proxy={"ttl": "1s"})
    time.sleep(1.2)
    with suspended(mirror):
        removed = ok(pullthrough("gc", str(short)))
    assert f"removed {len(everything)} objects" in removed, removed
    assert not everything & set(mirror.stored_files())

    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "again")

    assert (
        upstream_proxy.count("GET", f"/manifests/{image.digest}")
        + upstream_proxy.count("GET", f"/manifests/{image.tag}")
        == 1
    ), "the manifest gc removed was not fetched again"
    assert everything <= set(mirror.stored_files())
    assert ghosts(mirror) == []
    no_ghost_in_commands(mirror)


# Fails on the code before the fix within its first 16 steps (another seed may take
# longer to reach a pull by tag right after gc beside a server that remembers the manifest).
SEED = 14


def test_any_sequence_of_gc_pulls_and_restarts_leaves_the_index_consistent(
    image_factory: Any,
    mirror: MirrorProcess,
    tmp_path: Path,
) -> None:
    """25 steps in a seeded random order: pulls by tag and by digest (bytes checked),
    gc with TTL ~0 beside the server running, suspended or stopped, eviction for size,
    restarts. After every step the index names nothing the store lacks; at the end
    ``verify`` reports zero inconsistencies."""
    images = [
        image_factory("library/seq-a", layers=(64 * KiB, 32 * KiB)),
        image_factory("library/seq-b", layers=(48 * KiB,)),
        image_factory("library/seq-c", layers=(32 * KiB,), index=True),
    ]
    expire_all = variant(mirror, tmp_path / "ttl.yml", proxy={"ttl": "1ms"})
    # Under what the three images hold: eviction for size removes some objects, not all.
    evict_some = variant(mirror, tmp_path / "maxsize.yml", mirror_keys={"maxsize": "150KiB"})

    def gc(config: Path) -> None:
        ok(pullthrough("gc", str(config)))

    def gc_beside_running() -> None:
        gc(expire_all)

    def gc_beside_suspended() -> None:
        with suspended(mirror):
            gc(expire_all)

    def gc_while_stopped() -> None:
        mirror.stop()
        gc(expire_all)
        mirror.start()

    def evict_for_size() -> None:
        with suspended(mirror):
            gc(evict_some)

    def restart() -> None:
        mirror.stop()
        mirror.start()

    rng = random.Random(SEED)
    steps: list[tuple[str, Callable[[], None]]] = []
    for _ in range(25):
        image = rng.choice(images)
        steps.append(
            rng.choice(
                [
                    (f"pull {image.repo} by tag", lambda i=image: pull(mirror, i, by_digest=False)),
                    (f"pull {image.repo} by tag", lambda i=image: pull(mirror, i, by_digest=False)),
                    (
                        f"pull {image.repo} by digest",
                        lambda i=image: pull(mirror, i, by_digest=True),
                    ),
                    ("gc beside the running server", gc_beside_running),
                    ("gc beside the suspended server", gc_beside_suspended),
                    ("gc while the server is stopped", gc_while_stopped),
                    ("evict for size", evict_for_size),
                    ("restart", restart),
                ]
            )
        )
    done: list[str] = []
    for name, step in steps:
        step()
        done.append(name)
        assert ghosts(mirror) == [], f"after {done}"
    for image in images:  # every image still pulls whole and correct
        pull(mirror, image, by_digest=False)
    assert ghosts(mirror) == [], f"after {done}"
    no_ghost_in_commands(mirror)
