"""Hosted repositories for replicas that share a bucket and Redis, not a filesystem.

The hosted index stays one SQLite file (``store.hosted_index``), but each replica keeps
its own copy and the bucket holds the shared one (``<rootdirectory>/pullthrough/hosted.db``).
Redis holds its version (``hosted|version``: a random token, replaced at every write):

- **A read** asks Redis for the version first (one GET) and, when another replica has
  written since, loads the bucket's copy before answering: a push acknowledged by one
  replica is seen by the next read on any other. With Redis unreachable a replica answers
  from the copy it has (perhaps a write behind) rather than failing pulls.
- **A write** (a blob pushed or mounted, a manifest or tag, a deletion) holds the cluster's
  hosted write lock (``hosted|lock``, ``SET NX PX`` with a token of this replica's), loads
  the current copy, changes it, puts it into the bucket and publishes a new version, all
  before the client hears of it. Writes are few beside reads (a push is a handful); they
  are serialized across the cluster, which keeps the file's transactions what they are on
  one host (a manifest and the blobs it needs, gc's mark and sweep). Without Redis a write
  is refused (503): it could not be seen by the other replicas.

Everything read from Redis is a token compared for equality; nothing from it names a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from pullthrough.cluster.connection import Coordination, RedisUnavailable, key
from pullthrough.errors import BucketUnavailable
from pullthrough.mirror.bucket_tier import HOSTED_SNAPSHOT, BucketTier
from pullthrough.store.hosted_index import HostedIndex, HostedManifest

log = logging.getLogger(__name__)

T = TypeVar("T")

VERSION = key("hosted", "version")
LOCK = key("hosted", "lock")
# A write takes a few small requests; a replica that dies holding the lock frees it then.
LOCK_TTL_MS = 30_000
# How long a write waits for another replica's to end before answering 503.
LOCK_WAIT = 20.0

_UNLOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# Keep the lock for another LOCK_TTL_MS, if this holder still has it (a long gc).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class SharedHostedIndex(HostedIndex):
    """``HostedIndex`` over a copy of the bucket's file, kept current through Redis."""

    def __init__(self, path: Path, coordination: Coordination, tier: BucketTier) -> None:
        super().__init__(path)
        self._c = coordination
        self._tier = tier
        self._unlock = coordination.client.register_script(_UNLOCK)
        self._renew = coordination.client.register_script(_RENEW)
        self.version: str | None = None  # the shared version this replica's copy is
        self._loading = asyncio.Lock()
        self._writes = asyncio.Lock()  # this replica's writes, one at a time
        self._writing = False

    async def open(self) -> None:
        """Start from the bucket's copy (this replica's disk may have none, or an old one)."""
        try:
            version = await self._current()
        except RedisUnavailable:
            version = None  # loaded again once redis tells the version
        await self._load(version or "")

    async def _current(self) -> str | None:
        value = await self._c.call(lambda r: r.get(VERSION))
        return value if isinstance(value, str) else None

    async def _load(self, version: str, *, writer: bool = False) -> None:
        """Replace this replica's copy with the bucket's (none there: an empty index).
        One load at a time; statements run between loads, never during one. While this
        replica writes, only the writer loads."""
        async with self._loading:
            if version == self.version or (self._writing and not writer):
                return  # loaded by the caller before us, or the writer's copy is newer
            incoming = self.path.with_name(f"{self.path.name}.incoming-{uuid.uuid4().hex[:8]}")
            try:
                found = await self._tier.bucket.get_file(HOSTED_SNAPSHOT, incoming)

                def swap() -> None:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    try:
                        for suffix in ("-journal", "-wal", "-shm"):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(f"{self.path}{suffix}")
                        if found:
                            os.replace(incoming, self.path)
                        else:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(self.path)
                    finally:
                        self._open_sync()  # the old copy, if the new one could not be put

                await super()._run(swap)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(incoming.unlink)
            self.version = version

    async def current(self) -> None:
        """Load the bucket's copy if another replica has written since ours was loaded."""
        if self._writing:
            return  # under this replica's lock: its copy is the current one
        try:
            version = await self._current()
        except RedisUnavailable:
            return  # answer from the copy this replica has
        if (version or "") == self.version:
            return
        try:
            await self._load(version or "")
        except BucketUnavailable as exc:
            log.warning("hosted index not refreshed from the bucket: %s", exc.message)

    async def _run(self, fn: Callable[[], T]) -> T:
        await self.current()
        return await super()._run(fn)

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Hold the cluster's hosted write lock over a change of this replica's copy, and
        publish the copy when the block ends (also when it raised: a failed manifest
        push may still have released what it stored)."""
        async with self._writes:
            token = f"{self._c.node}#{uuid.uuid4().hex}"
            await self._lock(token)
            renewing = asyncio.get_running_loop().create_task(self._keep(token))
            # From here no read's refresh swaps the file: it would put back the bucket's
            # copy without this write's change, which the publish would then lose.
            self._writing = True
            try:
                version = await self._current()
                if (version or "") != self.version:
                    await self._load(version or "", writer=True)
                try:
                    yield
                finally:
                    await self._publish()
            except RedisUnavailable as exc:
                raise _unavailable(exc) from None
            finally:
                self._writing = False
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                with contextlib.suppress(RedisUnavailable):
                    await self._c.call(lambda r: self._unlock(keys=[LOCK], args=[token]))

    async def _keep(self, token: str) -> None:
        """Renew the lock while its holder works (a write is short; gc may be long)."""
        while True:
            await asyncio.sleep(LOCK_TTL_MS / 3000)
            with contextlib.suppress(RedisUnavailable):
                await self._c.call(lambda r: self._renew(keys=[LOCK], args=[token, LOCK_TTL_MS]))

    async def _lock(self, token: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        delay = 0.01
        while True:
            try:
                taken = await self._c.call(lambda r: r.set(LOCK, token, nx=True, px=LOCK_TTL_MS))
            except RedisUnavailable as exc:
                raise _unavailable(exc) from None
            if taken:
                return
            if loop.time() >= deadline:
                raise BucketUnavailable(
                    "another replica is writing the hosted index; try again",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _publish(self) -> None:
        await self._tier.snapshot_index(self.path, HOSTED_SNAPSHOT)
        version = uuid.uuid4().hex
        await self._c.call(lambda r: r.set(VERSION, version))
        self.version = version

    async def _write(self, change: Callable[[], Awaitable[T]]) -> T:
        async with self.writing():
            return await change()

    # --- the writes -----------------------------------------------------------------------

    async def add_blob(self, repo: str, digest: str, size: int) -> None:
        await self._write(lambda: super(SharedHostedIndex, self).add_blob(repo, digest, size))

    async def delete_blob(self, repo: str, digest: str) -> bool:
        return await self._write(lambda: super(SharedHostedIndex, self).delete_blob(repo, digest))

    async def add_manifest(
        self,
        repo: str,
        manifest: HostedManifest,
        *,
        subject: str | None,
        children: Iterable[str],
        tag: str | None,
    ) -> None:
        kids = list(children)
        await self._write(
            lambda: super(SharedHostedIndex, self).add_manifest(
                repo, manifest, subject=subject, children=kids, tag=tag
            )
        )

    async def delete_tag(self, repo: str, tag: str) -> bool:
        return await self._write(lambda: super(SharedHostedIndex, self).delete_tag(repo, tag))

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        return await self._write(
            lambda: super(SharedHostedIndex, self).delete_manifest(repo, digest)
        )


def _unavailable(exc: BaseException) -> BucketUnavailable:
    return BucketUnavailable(
        f"pushes and deletions wait for the cluster's redis, which did not answer ({exc}): "
        "the other replicas could not see them",
        headers={"Retry-After": "5"},
    )
