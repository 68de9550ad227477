"""Blob upload sessions: each one a file under ``<root>/uploads/`` that grows chunk by chunk.

A session is its data file (``<id>.data``, the bytes received so far, in order) and a
small file naming its repository (``<id>.repo``); nothing else is kept, so a session
survives a restart of the server and a chunked upload resumes afterwards. Ids are 32 hex
digits made here; any other id is unknown, so a client-chosen id never names a path.
Bodies are streamed to the file in bounded chunks (the memory a push costs does not grow
with its size). A session untouched for ``idle`` seconds is removed by ``expire``.

In cluster mode the directory is shared: a session started through one replica is
continued, finished or cancelled through any other. A lock on its data file (``flock``)
keeps two chunks arriving through two replicas at once from mixing (the second is
refused), and the end of an upload from racing a chunk. The cap per client is counted by
each replica for the sessions started through it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pullthrough.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    StorageFull,
    TooManyRequests,
)
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore

if TYPE_CHECKING:  # replicas on a bucket only
    from pullthrough.cluster.upload_owners import UploadOwners

log = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")
WRITE_CHUNK = 1024 * 1024
HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    repo: str
    size: int  # bytes received so far


class Uploads:
    """Upload sessions of hosted repositories, on disk."""

    def __init__(self, *, root: Path, store: BlobStore, idle: float, per_client: int) -> None:
        self.dir = root / "uploads"
        self.store = store
        self.idle = idle
        self.per_client = per_client
        self._locks: dict[str, asyncio.Lock] = {}
        self._owners: dict[str, str] = {}  # session id -> client address (this process)
        self._held: dict[str, int] = {}  # client address -> sessions it holds open here
        # Replicas on a bucket (no shared directory): the cluster learns which replica
        # holds each session, and the others forward its requests here.
        self.owners: UploadOwners | None = None

    def prepare(self) -> None:
        """Create the directory (blocking; at start-up). Sessions found there are kept."""
        self.dir.mkdir(parents=True, exist_ok=True)

    async def start(self, repo: str, client: str) -> Session:
        """A new, empty session for ``repo``; 429 when ``client`` holds too many open ones
        (each holds a file and, while a chunk arrives, a lock). The place is taken before
        the first await: concurrent starts from one client cannot all pass the check."""
        if self._held.get(client, 0) >= self.per_client:
            raise TooManyRequests(
                f"too many open upload sessions from this client (at most {self.per_client}; "
                "finish or cancel some; mirror.hosted.max_uploads_per_client)",
                headers={"Retry-After": "5"},
            )
        session_id = uuid.uuid4().hex
        self._own(session_id, client)

        def work() -> None:
            try:
                self._data(session_id).touch(exist_ok=False)
                self._repo(session_id).write_text(repo)
            except BaseException:
                self._remove_sync(session_id)  # no half-made session is left behind
                raise

        try:
            await asyncio.to_thread(work)
        except BaseException:
            self._disown(session_id)
            raise
        if self.owners is not None:
            await self.owners.started(session_id)
        return Session(session_id, repo, 0)

    def _own(self, session_id: str, client: str) -> None:
        self._owners[session_id] = client
        self._held[client] = self._held.get(client, 0) + 1

    def _disown(self, session_id: str) -> None:
        client = self._owners.pop(session_id, None)
        if client is None:
            return
        left = self._held.get(client, 0) - 1
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)

    async def get(self, repo: str, session_id: str) -> Session:
        """The session ``session_id`` of ``repo``; BLOB_UPLOAD_UNKNOWN for anything else."""
        if not _ID.match(session_id):
            raise _unknown(session_id)

        def work() -> Session | None:
            try:
                owner = self._repo(session_id).read_text()
                size = self._data(session_id).stat().st_size
            except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
                return None
            return Session(session_id, owner, size) if owner == repo else None

        found = await asyncio.to_thread(work)
        if found is None:
            raise _unknown(session_id)
        return found

    def lock(self, session_id: str) -> asyncio.Lock:
        """Chunks of one session are written one at a time."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def append(
        self,
        session: Session,
        body: AsyncIterator[bytes],
        *,
        start: int | None = None,
        length: int | None = None,
    ) -> Session:
        """Append ``body`` to the session. ``start`` (from ``Content-Range``) must be where
        the session ends (416 otherwise: a gap or an overlap); ``length`` (the request's
        Content-Length), when given, must be what arrives (400 otherwise, and the session
        is left as it was)."""
        path = self._data(session.id)
        fd, size = await asyncio.to_thread(_open_locked, path, os.O_WRONLY | os.O_APPEND, session)
        session = Session(session.id, session.repo, size)  # as it is now, under the lock
        received = 0
        try:
            if start is not None and start != session.size:
                raise RangeInvalid(
                    f"chunk starts at {start}, but the upload has {session.size} bytes: "
                    "chunks must arrive in order, without gaps or overlaps",
                    headers=self.progress_headers(session),
                )
            buffered: list[bytes] = []
            pending = 0
            async for chunk in body:
                buffered.append(chunk)
                pending += len(chunk)
                received += len(chunk)
                if pending >= WRITE_CHUNK:
                    await asyncio.to_thread(_write_all, fd, b"".join(buffered))
                    buffered, pending = [], 0
            if buffered:
                await asyncio.to_thread(_write_all, fd, b"".join(buffered))
            if length is not None and received != length:
                raise BlobUploadInvalid(
                    f"the chunk announced {length} bytes but {received} arrived; discarded"
                )
        except BaseException as exc:
            # Whatever arrived of a failed chunk is cut off: the session stays as it was,
            # and the client may send the chunk again.
            if received:
                await asyncio.to_thread(os.ftruncate, fd, session.size)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the registry's disk is full; the chunk was not kept") from None
            raise
        finally:
            await asyncio.to_thread(os.close, fd)  # and with it the lock
        if self.owners is not None:
            await self.owners.touched(session.id)
        return Session(session.id, session.repo, session.size + received)

    async def finish(
        self,
        session: Session,
        digest: Digest,
        record: Callable[[int], Awaitable[None]],
    ) -> int:
        """Verify the session's bytes against ``digest``, fsync them and put them in the
        store, then ``record(size)`` them; returns the size. On a mismatch the session is
        removed and nothing is stored (DIGEST_INVALID). A chunk still being written to it
        (through another replica) makes it RANGE_INVALID, and the session stays.

        The file is checked to be in the store once recorded, and put back if a sweep
        took it in between (the same bytes cached for a mirrored name, expiring): the
        session's own link to it is dropped only then."""
        path = self._data(session.id)
        fd, _ = await asyncio.to_thread(_open_locked, path, os.O_RDWR, session)
        try:
            # Locked until the session's name for the file is gone: nothing appends to
            # it once it is a blob.
            written = await asyncio.to_thread(self._commit_sync, fd, path, digest)
            await record(written.st_size)
            await asyncio.to_thread(self._settle_sync, path, digest, written)
        except DigestInvalid:
            await self.cancel(session.id)
            raise
        except OSError as exc:
            await self.cancel(session.id)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the registry's disk is full; the blob was not kept") from None
            raise
        finally:
            await asyncio.to_thread(os.close, fd)
        await self.cancel(session.id)
        return written.st_size

    def _commit_sync(self, fd: int, path: Path, digest: Digest) -> os.stat_result:
        hasher = hashlib.new(digest.algorithm)
        position = 0
        while chunk := os.pread(fd, HASH_CHUNK, position):
            hasher.update(chunk)
            position += len(chunk)
        if hasher.hexdigest() != digest.hex:
            raise DigestInvalid(
                f"the uploaded bytes have digest {digest.algorithm}:{hasher.hexdigest()}, "
                f"not {digest}; nothing was stored",
                detail={"digest": str(digest)},
            )
        os.fsync(fd)
        written = os.fstat(fd)
        try:
            self.store.link_in_sync(path, digest, written)
        except FileNotFoundError:
            # Cancelled through another replica while it was hashed (a cancel takes no
            # lock): nothing stored, and the session is gone.
            raise _unknown(path.stem) from None
        return written

    def _settle_sync(self, path: Path, digest: Digest, written: os.stat_result) -> None:
        if not self.store.path_for(digest).is_file():
            log.warning("%s was swept while it was pushed: put back", digest)
            try:
                self.store.link_in_sync(path, digest, written)
            except FileNotFoundError:
                # And the session cancelled through another replica: the bytes are gone.
                raise _unknown(path.stem) from None
        path.unlink(missing_ok=True)  # a cancel through another replica may have gone first
        self.store.still_verified_sync(digest, written)  # the unlink moved its ctime

    async def cancel(self, session_id: str) -> bool:
        """Remove the session (its file may already be in the store: then only its
        repository note goes). True if there was one."""
        self._disown(session_id)
        self._locks.pop(session_id, None)
        found = await asyncio.to_thread(self._remove_sync, session_id)
        if found and self.owners is not None:
            await self.owners.ended(session_id)
        return found

    def _remove_sync(self, session_id: str) -> bool:
        found = False
        for path in (self._data(session_id), self._repo(session_id)):
            try:
                path.unlink()
                found = True
            except FileNotFoundError:
                pass
        return found

    async def expire(self) -> int:
        """Remove sessions untouched for ``idle`` seconds; returns how many."""
        cutoff = time.time() - self.idle

        def stale() -> list[str]:
            out = []
            for path in self.dir.glob("*.repo"):
                session_id = path.stem
                if not _ID.match(session_id):
                    continue
                try:
                    data_mtime = self._data(session_id).stat().st_mtime
                except FileNotFoundError:
                    data_mtime = 0.0
                if max(data_mtime, path.stat().st_mtime) < cutoff:
                    out.append(session_id)
            return out

        expired = [s for s in await asyncio.to_thread(stale) if not self.lock(s).locked()]
        for session_id in expired:
            await self.cancel(session_id)
        # Sessions of this replica's clients that another replica finished or cancelled
        # (the directory is shared in cluster mode): their places are given back.
        owned = list(self._owners)
        gone = await asyncio.to_thread(
            lambda: [s for s in owned if not self._repo(s).exists()]
        )
        for session_id in gone:
            if not self.lock(session_id).locked():
                self._disown(session_id)
                self._locks.pop(session_id, None)
        if expired:
            log.info("removed %d idle upload session(s)", len(expired))
        return len(expired)

    def progress_headers(self, session: Session) -> dict[str, str]:
        return _progress_headers(session)

    def _data(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.data"

    def _repo(self, session_id: str) -> Path:
        return self.dir / f"{session_id}.repo"


def _open_locked(path: Path, flags: int, session: Session) -> tuple[int, int]:
    """Open the session's data file and take its lock (blocking: call from a thread);
    returns the descriptor and the file's size under the lock. The lock (``flock``: the
    replicas of a cluster share the directory) keeps a chunk, or the end of the upload,
    from mixing with one that arrives through another replica at the same moment; that
    one is refused (RANGE_INVALID), not waited for. A session finished or cancelled
    meanwhile is unknown: its path names another file, or none."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise _unknown(session.id) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            now = Session(session.id, session.repo, os.fstat(fd).st_size)
            raise RangeInvalid(
                "another chunk of this upload is being written now (sent through another "
                "replica?): send chunks one after another, then ask where the upload stands",
                headers=_progress_headers(now),
            ) from None
        opened = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            raise _unknown(session.id)
    except BaseException:
        os.close(fd)
        raise
    return fd, opened.st_size


def _progress_headers(session: Session) -> dict[str, str]:
    return {
        "Location": f"/v2/{session.repo}/blobs/uploads/{session.id}",
        "Range": f"0-{max(session.size - 1, 0)}",
        "Docker-Upload-UUID": session.id,
    }


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unknown(session_id: str) -> BlobUploadUnknown:
    return BlobUploadUnknown(
        "no such upload session (finished, cancelled or expired)",
        detail={"uuid": session_id[:64]},
    )
