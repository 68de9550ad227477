"""Content-addressed files on disk: ``blobs/<algorithm>/<2 hex>/<hex>``.

A file is only ever put in place by a rename after its digest was verified and its bytes
fsynced, so any file found under ``blobs/`` is whole and correct. Temp files live in
``tmp/`` inside the same root (same filesystem, so the rename is atomic) and are removed at
start-up: a crash leaves nothing that could be served.

All methods that touch the disk run in a thread; none blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pullthrough.reference import Digest
from pullthrough.store.identity import FileIdentity, VerifiedFiles

if TYPE_CHECKING:  # imported only with storage.s3 (it loads obstore)
    from pullthrough.store.bucket import Bucket

# The largest object read back from the bucket in one piece (a manifest: see
# mirror.hosted.max_manifest_size and the manifest fetch limit).
SMALL_OBJECT_LIMIT = 16 * 1024 * 1024


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
    """An open file descriptor of a stored blob, its size and its identity when opened
    (compare with ``BlobStore.verified`` before trusting the bytes); close it when done."""

    fd: int
    size: int
    identity: FileIdentity

    def close(self) -> None:
        os.close(self.fd)


def new_temp_id() -> str:
    """A fresh name for a temp file (32 lowercase hex)."""
    return uuid.uuid4().hex


def is_temp_id(text: object) -> bool:
    """Whether ``text`` could name a temp file: exactly what ``new_temp_id`` makes."""
    return isinstance(text, str) and len(text) == 32 and _is_hex(text)


def hasher_for(digest: Digest) -> hashlib._Hash:
    return hashlib.new(digest.algorithm)


def _matches(digest: Digest, data: bytes) -> bool:
    hasher = hasher_for(digest)
    hasher.update(data)
    return hasher.hexdigest() == digest.hex


class BlobStore:
    """Verified blobs (layers, configs and manifests alike) under one root directory."""

    def __init__(self, root: Path, bucket: Bucket | None = None) -> None:
        self.root = root
        # storage.s3: the durable copy of every blob is in the bucket, and this root holds
        # downloads in progress and a cache. Small objects (manifests) are written through
        # to the bucket here and read back from it when the cache no longer has them; large
        # blobs are uploaded by the mirror once a download is verified (mirror.bucket_tier).
        self.bucket = bucket
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        # What each file looked like when its bytes were verified: reads trust a file
        # only while its stat still says the same (``store.identity``).
        self.verified = VerifiedFiles()

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

    def temp_path(self, digest: Digest, file_id: str | None = None) -> Path:
        """A temp file for ``digest`` in ``tmp/``: a new one, or the one ``file_id`` names
        (a ``new_temp_id()``, e.g. another replica's download). Raises ValueError for any
        other ``file_id``: it may come from a shared record, and the path must never
        leave ``tmp/``."""
        if file_id is None:
            file_id = new_temp_id()
        elif not is_temp_id(file_id):
            raise ValueError(f"not a temp file id: {file_id[:100]!r}")
        return self.tmp_dir / f"{digest.algorithm}-{digest.hex}.{file_id}"

    async def open(self, digest: Digest) -> OpenBlob | None:
        """Open a stored blob for reading, or None when it is not on disk (a miss)."""
        return await asyncio.to_thread(self._open_sync, self.path_for(digest))

    @staticmethod
    def _open_sync(path: Path) -> OpenBlob | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        st = os.fstat(fd)
        return OpenBlob(fd, st.st_size, FileIdentity.of(st))

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
        if data is None and self.bucket is not None:
            data = self.bucket.read_sync(digest, SMALL_OBJECT_LIMIT)
            if data is not None and _matches(digest, data):
                self._put_sync(digest, data, upload=False)  # cached again
                return data
            if data is not None:
                raise DigestMismatch(f"{digest} in the bucket does not match its digest")
        if data is not None and not _matches(digest, data):
            raise DigestMismatch(f"stored {digest} no longer matches its digest")
        return data

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store ``data`` as ``digest``: verify, write to a temp file, fsync, rename."""
        await asyncio.to_thread(self._put_sync, digest, data)

    def _put_sync(self, digest: Digest, data: bytes, *, upload: bool = True) -> None:
        if not _matches(digest, data):
            raise DigestMismatch(f"content does not match {digest}")
        if upload and self.bucket is not None:
            # The bucket first: a manifest recorded in the index must be in the bucket,
            # and the caller records it only once this returns.
            self.bucket.put_sync(digest, data)
        temp = self.temp_path(digest)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            written = os.fstat(fd)
        finally:
            os.close(fd)
        self.commit_sync(temp, digest, written)

    def commit_sync(self, temp: Path, digest: Digest, written: os.stat_result) -> None:
        """Rename a verified, fsynced temp file into place and make the rename durable;
        remember the placed file's identity as verified. ``written``: the temp file's stat
        once its verified bytes were written and synced."""
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        # Stat after the rename: renaming changes the ctime. It is recorded only if it is
        # still the file that was written (same inode, size and mtime): anything that wrote
        # to it since the rename would otherwise be trusted as verified. Eviction may hold
        # the path aside for a moment (it moves a file aside to compare it with the one it
        # decided on, and links a fresh copy like this one back). In either case nothing is
        # recorded and the first read hashes the file, rather than failing a verified
        # download.
        self.still_verified_sync(digest, written)
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

        self.verified.forget(digest)

        def work() -> bool:
            try:
                self.path_for(digest).unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(work)

    def identity_sync(self, digest: Digest) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the stored file, None when it is not on disk (blocking).
        A fresh copy put in place later is a new file: ``put`` and ``commit_sync``
        rename, they never write into the file that is there."""
        try:
            st = self.path_for(digest).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_dev, st.st_ino

    def remove_if_same_sync(self, digest: Digest, identity: tuple[int, int]) -> bool:
        """Delete the stored file only if it is still the one ``identity`` names (blocking).

        Eviction decides, drops the index entry, and only then removes the file; another
        process (the server while ``pullthrough gc`` runs, or the other way round) may
        have fetched the object again in between and indexed its fresh copy. That copy
        must stay, or the index would name a file that is gone. The file is moved aside
        first, so the comparison and the removal concern the same file; a fresh copy
        moved aside by mistake is linked back (unless a newer one is in place already).
        False when nothing was removed."""
        aside = self.set_aside_sync(digest, identity)
        if aside is None:
            return False
        aside.unlink()
        return True

    def set_aside_sync(self, digest: Digest, identity: tuple[int, int]) -> Path | None:
        """The first half of ``remove_if_same_sync``: move the stored file out of the store
        if it is the one ``identity`` names, and return where it is now (to be unlinked,
        or ``put_back_sync``); None when the file is gone or another one (put back)."""
        path = self.path_for(digest)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Not a temp_path name: no download adopts it; tmp/ is emptied of leftovers.
        aside = self.tmp_dir / f"evicted-{digest.algorithm}-{digest.hex}.{new_temp_id()}"
        try:
            os.rename(path, aside)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = aside.stat()
            if (st.st_dev, st.st_ino) == identity:
                return aside
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        except BaseException:
            self.put_back_sync(digest, aside)
            raise
        aside.unlink()
        return None

    def put_back_sync(self, digest: Digest, aside: Path) -> None:
        """Return a file ``set_aside_sync`` moved out (unless a newer copy is in place)."""
        with contextlib.suppress(FileExistsError):
            os.link(aside, self.path_for(digest))
        aside.unlink()

    def link_in_sync(self, source: Path, digest: Digest, written: os.stat_result) -> None:
        """Put a verified, fsynced file into the store as ``digest`` while ``source`` keeps
        its own name for it (a hard link, then ``commit_sync``): the caller can put it back
        if eviction takes it before the caller's record protects it."""
        temp = self.temp_path(digest)
        os.link(source, temp)
        self.commit_sync(temp, digest, written)

    def still_verified_sync(self, digest: Digest, written: os.stat_result) -> None:
        """Record the stored file as verified again if it is still the file written (its
        ctime moved: a link to it was added or removed)."""
        try:
            placed = FileIdentity.of(self.path_for(digest).stat())
        except FileNotFoundError:
            return
        if (placed.dev, placed.ino, placed.size, placed.mtime_ns) == (
            written.st_dev,
            written.st_ino,
            written.st_size,
            written.st_mtime_ns,
        ):
            self.verified.record(digest, placed)

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
