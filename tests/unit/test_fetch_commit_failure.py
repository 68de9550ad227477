"""A download whose commit fails after its temp file's descriptor was closed (found by
scripts/soak.py, there through the eviction race in test_commit_race): ``_commit`` closes
the descriptor first, and the failure path closed the same number again, twice. In a
threaded server that number may already name another file (a blob being sent, the index),
which would then be closed under its user."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pullthrough.metrics import Metrics
from pullthrough.mirror import fetch as fetch_module
from pullthrough.mirror.fetch import Fetch
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore


async def test_a_failed_commit_closes_the_temp_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path)
    store.prepare()
    data = b"soak" * 1000
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())

    async def stored(_: Fetch) -> None:
        raise AssertionError("nothing was stored")

    fetch = Fetch(
        digest=digest,
        upstream=SimpleNamespace(  # type: ignore[arg-type]
            name="docker.io", config=SimpleNamespace(stall_timeout=10.0, stall_budget=25.0)
        ),
        repo="soak/app",
        store=store,
        on_stored=stored,
        metrics=Metrics(),
    )
    opened: list[int] = []
    closed: list[int] = []
    open_temp, close = fetch._open_temp, os.close

    def open_and_note(adopt: bool) -> int:
        opened.append(open_temp(adopt))
        return opened[-1]

    def close_and_note(fd: int) -> None:
        closed.append(fd)
        close(fd)

    async def download(fd: int, hasher: Any) -> None:
        os.write(fd, data)
        hasher.update(data)
        fetch.written = len(data)

    def commit_fails(temp: Path, digest: object) -> None:
        raise OSError(errno.EIO, "the directory's fsync failed")

    monkeypatch.setattr(fetch, "_open_temp", open_and_note)
    monkeypatch.setattr(fetch, "_download", download)
    monkeypatch.setattr(store, "commit_sync", commit_fails)
    monkeypatch.setattr(fetch_module.os, "close", close_and_note)
    await fetch.download()
    monkeypatch.undo()
    assert fetch.error is not None and not fetch.verified
    assert closed.count(opened[0]) == 1, (opened, closed)
    assert not fetch.temp_path.exists()
