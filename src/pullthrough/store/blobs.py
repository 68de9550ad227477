"""Content-addressed files on disk: ``blobs/<algorithm>/<2 hex>/<hex>``.

A file is only ever put in place by a rename after its digest was verified and its bytes
fsynced, so any file found under ``blobs/`` is whole and correct. Temp files live in
``tmp/`` inside the same root (same filesystem, so the rename is atomic) and are removed at
start-up: a crash leaves nothing that could be served.

All methods that touch the disk run in a thread; none blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pullthrough.reference import Digest


class DigestMismatch(Exception):
    """Bytes whose digest is not the one they were fetched as."""


_HEX_LENGTH = {"sha256": 64, "sha512": 128}


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True, slots=True)
class StoredFile:
    digest: str
    size: int
    mtime: float
    path: Path


@dataclass(frozen=True, slots=True)
class OpenBlob:
    """An open file descriptor of a verified blob and its size; close it when done."""

    fd: int
    size: int

    def close(self) -> None:
        os.close(self.fd)


def hasher_for(digest: Digest) -> hashlib._Hash:
    return hashlib.new(digest.algorithm)


class BlobStore:
    """Verified blobs (layers, configs and manifests alike) under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create the layout and drop temp files left by a crash. Called once at start-up."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: Digest) -> Path:
        # Digest was validated by reference.parse_digest: algorithm and hex are [a-z0-9] only,
        # so this path cannot leave the storage root.
        return self.blob_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def temp_path(self, digest: Digest) -> Path:
        return self.tmp_dir / f"{digest.algorithm}-{digest.hex}.{uuid.uuid4().hex}"

    async def open(self, digest: Digest) -> OpenBlob | None:
        """Open a stored blob for reading, or None when it is not on disk (a miss)."""
        return await asyncio.to_thread(self._open_sync, self.path_for(digest))

    @staticmethod
    def _open_sync(path: Path) -> OpenBlob | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return OpenBlob(fd, os.fstat(fd).st_size)

    async def read(self, digest: Digest) -> bytes | None:
        """A small stored blob (a manifest) in full, or None when it is not on disk."""
        return await asyncio.to_thread(self._read_sync, self.path_for(digest))

    @staticmethod
    def _read_sync(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def read_verified(self, digest: Digest) -> bytes | None:
        """Like ``read``, checked against ``digest`` (in the same thread): raises
        DigestMismatch when the file no longer matches, as after a disk error."""
        return await asyncio.to_thread(self.read_verified_sync, digest)

    def read_verified_sync(self, digest: Digest) -> bytes | None:
        """``read_verified`` for a caller already off the event loop."""
        data = self._read_sync(self.path_for(digest))
        if data is not None:
            hasher = hasher_for(digest)
            hasher.update(data)
            if hasher.hexdigest() != digest.hex:
                raise DigestMismatch(f"stored {digest} no longer matches its digest")
        return data

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store ``data`` as ``digest``: verify, write to a temp file, fsync, rename."""
        await asyncio.to_thread(self._put_sync, digest, data)

    def _put_sync(self, digest: Digest, data: bytes) -> None:
        hasher = hasher_for(digest)
        hasher.update(data)
        if hasher.hexdigest() != digest.hex:
            raise DigestMismatch(f"content does not match {digest}")
        temp = self.temp_path(digest)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.commit_sync(temp, digest)

    def commit_sync(self, temp: Path, digest: Digest) -> None:
        """Rename a verified, fsynced temp file into place and make the rename durable."""
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def exists(self, digest: Digest) -> bool:
        return await asyncio.to_thread(self.path_for(digest).is_file)

    async def remove(self, digest: Digest) -> bool:
        """Delete a stored blob; readers that have it open keep reading it to the end (an
        unlinked file lives until its last descriptor closes). False if it was not there."""

        def work() -> bool:
            try:
                self.path_for(digest).unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(work)

    def scan(self) -> list[StoredFile]:
        """Every blob file on disk (blocking: call from a thread or an offline command).
        Files whose names are not digests are skipped."""
        found: list[StoredFile] = []
        if not self.blob_dir.is_dir():
            return found
        for algorithm_dir in self.blob_dir.iterdir():
            want = _HEX_LENGTH.get(algorithm_dir.name)
            if want is None or not algorithm_dir.is_dir():
                continue
            for prefix_dir in algorithm_dir.iterdir():
                if not prefix_dir.is_dir():
                    continue
                for path in prefix_dir.iterdir():
                    name = path.name
                    if (
                        len(name) != want
                        or not _is_hex(name)
                        or not name.startswith(prefix_dir.name)
                    ):
                        continue
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append(
                        StoredFile(f"{algorithm_dir.name}:{name}", st.st_size, st.st_mtime, path)
                    )
        return found

    def capacity(self) -> int:
        """Total size in bytes of the filesystem holding the store (blocking)."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize
