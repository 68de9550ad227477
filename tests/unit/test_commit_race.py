"""Committing a verified download while eviction holds the blob's path aside (found by
scripts/soak.py): eviction renames a stored file aside to compare it with the one it decided
on, and links a fresh copy back. A commit that stat'ed its file in that moment raised
FileNotFoundError, and the verified download failed (the client's transfer was aborted)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pullthrough.reference import parse_digest
from pullthrough.store import blobs
from pullthrough.store.blobs import BlobStore
from pullthrough.store.identity import FileIdentity


def test_a_commit_while_eviction_holds_the_path_aside_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path)
    store.prepare()
    data = b"soak" * 1000
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())
    temp = store.temp_path(digest)
    temp.write_bytes(data)
    aside = tmp_path / "aside"
    replace = os.replace

    def replace_then_evict_aside(src: Path, dst: Path) -> None:
        replace(src, dst)
        os.rename(dst, aside)  # eviction, comparing: not the file it decided on

    monkeypatch.setattr(blobs.os, "replace", replace_then_evict_aside)
    store.commit_sync(temp, digest)
    monkeypatch.undo()
    os.link(aside, store.path_for(digest))  # ... so it links the fresh copy back
    placed = store.path_for(digest)
    assert placed.read_bytes() == data
    # Nothing was recorded as verified: the first read hashes the file.
    assert not store.verified.matches(digest, FileIdentity.of(placed.stat()))
