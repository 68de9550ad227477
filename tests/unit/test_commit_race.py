"""Races at the moment a verified download is renamed into place.

Eviction holding the blob's path aside (found by scripts/soak.py): eviction renames a stored
file aside to compare it with the one it decided on, and links a fresh copy back. A commit
that stat'ed its file in that moment raised FileNotFoundError, and the verified download
failed (the client's transfer was aborted).

A write to the file between the rename and the stat that is recorded as verified (found by
CI, tests/integration/test_faults.py: a bit flipped just after the rename on a loaded
machine was then served unhashed, as verified)."""

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
    store.commit_sync(temp, digest, temp.stat())
    monkeypatch.undo()
    os.link(aside, store.path_for(digest))  # ... so it links the fresh copy back
    placed = store.path_for(digest)
    assert placed.read_bytes() == data
    # Nothing was recorded as verified: the first read hashes the file.
    assert not store.verified.matches(digest, FileIdentity.of(placed.stat()))


def test_a_file_written_to_after_its_bytes_were_verified_is_not_recorded_as_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path)
    store.prepare()
    data = b"rot" * 1000
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())
    temp = store.temp_path(digest)
    temp.write_bytes(data)
    written = temp.stat()
    replace = os.replace

    def replace_then_flip_a_bit(src: Path, dst: Path) -> None:
        replace(src, dst)
        with open(dst, "r+b") as f:  # a bad disk, or anyone, in the moment after the rename
            f.seek(10)
            f.write(b"X")
        st = os.stat(dst)  # a later mtime, as a write a moment later would leave
        os.utime(dst, ns=(st.st_atime_ns, written.st_mtime_ns + 1_000_000))

    monkeypatch.setattr(blobs.os, "replace", replace_then_flip_a_bit)
    store.commit_sync(temp, digest, written)
    monkeypatch.undo()
    placed = store.path_for(digest)
    assert placed.read_bytes() != data
    assert not store.verified.matches(digest, FileIdentity.of(placed.stat()))


def test_an_untouched_file_is_recorded_as_verified_after_the_rename(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.prepare()
    data = b"fine" * 1000
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())
    temp = store.temp_path(digest)
    temp.write_bytes(data)
    store.commit_sync(temp, digest, temp.stat())
    placed = store.path_for(digest)
    assert store.verified.matches(digest, FileIdentity.of(placed.stat()))
