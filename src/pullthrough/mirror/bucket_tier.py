"""``storage.s3`` on the mirror's side: the bucket holds the durable copy of every blob,
the local store downloads in progress and a cache of what this process served.

- A download from an upstream is verified and renamed into the local store as always
  (clients get their last byte once the digest matched); then the file is uploaded, and
  only once the bucket has it is it recorded in the index. So an index entry means "in the
  bucket"; a local file means "cached here". A failed upload records nothing and drops
  the local copy: the next request fetches again.
- A blob the index has but the local cache does not is answered with a presigned URL to
  the object (``storage.redirect``, the default, as distribution does), or, with
  ``redirect.disable``, fetched from the bucket like from an upstream (``BucketSource``):
  streamed to its clients while it lands in the local cache, its last byte held back
  until the digest matched, one download however many clients ask.
- The local cache is kept under ``mirror.s3.localcache.maxsize`` by dropping the least
  recently used cached blobs (never manifests, never a download in progress); the index
  and the bucket are untouched by that.

Who may read a digest is ``mirror.provenance``'s decision before any of this is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

from pullthrough.config.model import S3Config, UpstreamConfig
from pullthrough.errors import UpstreamUnavailable
from pullthrough.mirror.fetch import Fetch
from pullthrough.reference import Digest, parse_digest
from pullthrough.store.blobs import BlobStore, StoredFile
from pullthrough.store.bucket import Bucket
from pullthrough.store.index import IndexBackend
from pullthrough.upstream.client import BlobStream, UpstreamClient
from pullthrough.upstream.wire import OperatorWire

log = logging.getLogger(__name__)

BUCKET_NAME = "s3"  # how reads from the bucket are named in logs and metrics
BUCKET_DOWNLOADS = 64  # reads from the bucket at once (stream mode)
STRAY_AFTER = 120.0  # an unindexed local file older than this is dropped from the cache
INDEX_SNAPSHOT = "index.db"  # the index's last copy, under <rootdirectory>/pullthrough/
HOSTED_SNAPSHOT = "hosted.db"  # the hosted repositories' index, beside it
SNAPSHOT_INTERVAL = 60.0


class BucketSource:
    """The bucket as a source of blob bodies for a ``Fetch`` (stream mode): the same
    download thread, resume with Range, stall detection and verification as an upstream.
    It offers only what ``Fetch`` and ``Fetches`` ask of an upstream."""

    def __init__(self, bucket: Bucket, config: S3Config) -> None:
        self.name = BUCKET_NAME
        self._bucket = bucket
        self.config = UpstreamConfig(name=BUCKET_NAME, url=config.endpoint)
        self._slots = asyncio.Semaphore(BUCKET_DOWNLOADS)
        self._wire = OperatorWire(
            connect_timeout=self.config.connect_timeout, read_timeout=self.config.read_timeout
        )

    @asynccontextmanager
    async def download_slot(self) -> AsyncIterator[None]:
        async with self._slots:
            yield

    @asynccontextmanager
    async def blob(
        self, repo: str, digest: str, offset: int = 0
    ) -> AsyncIterator[BlobStream | None]:
        url = await self._bucket.presign(parse_digest(digest))
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = await self._wire.session.request("GET", url, headers=headers)
        except Exception as exc:  # connection refused, reset, time-out
            raise self.unavailable(exc) from None
        try:
            if resp.status == 404:
                yield None
                return
            if resp.status not in (200, 206) or (offset and resp.status != 206):
                raise UpstreamUnavailable(f"the storage bucket answered {resp.status}")
            length = resp.content_length
            size = None if length is None else offset + length
            yield BlobStream(resp, offset, size)
        finally:
            resp.release()

    def unavailable(self, exc: BaseException) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"the storage bucket could not be read: {exc or type(exc)}")

    async def close(self) -> None:
        await self._wire.close()


class BucketTier:
    """Uploads, remote reads and the local cache's size, for one mirror process."""

    def __init__(
        self, config: S3Config, bucket: Bucket, store: BlobStore, index: IndexBackend
    ) -> None:
        self.config = config
        self.bucket = bucket
        self.store = store
        self.index = index
        self.source = BucketSource(self.bucket, config)

    def client_of(self) -> UpstreamClient:
        """The source as the type ``Fetch`` is written for (it uses only what
        ``BucketSource`` has)."""
        return cast(UpstreamClient, self.source)

    def from_bucket(self, fetch: Fetch) -> bool:
        return fetch.source is cast(object, self.source)

    async def upload(self, fetch: Fetch) -> None:
        """Put a verified download into the bucket; on failure the local copy goes too
        (unrecorded, it must not be served or adopted) and this raises."""
        try:
            await self.bucket.upload(fetch.digest, fetch.final_path, fetch.written)
        except BaseException:
            with contextlib.suppress(OSError):
                await self.store.remove(fetch.digest)
            raise

    async def size(self, digest: Digest) -> int | None:
        """The blob's size if the bucket holds it (the index says so), else None."""
        record = await self.index.blob(str(digest))
        return None if record is None else record.size

    async def url(self, digest: Digest) -> str:
        return await self.bucket.presign(digest)

    async def listing(self) -> list[StoredFile]:
        """The bucket's blobs, as the store's scan reports local files (for reconcile)."""
        return [
            StoredFile(o.digest, o.size, o.modified, self.store.path_for(parse_digest(o.digest)))
            async for o in self.bucket.objects()
        ]

    async def delete(self, digest: str) -> None:
        try:
            await self.bucket.delete(parse_digest(digest))
        except Exception as exc:  # left for the next reconcile (it is not indexed any more)
            log.warning("could not delete %s from the bucket: %s", digest, exc)

    async def trim(self, busy: Callable[[str], bool]) -> int:
        """Drop least recently used cached blobs until the local cache fits its size.
        Returns the bytes freed."""
        files = await asyncio.to_thread(self.store.scan)
        aged = await self.index.objects(f.digest for f in files)
        freed = 0
        # A local file the index does not hold is nobody's: evicted (perhaps by another
        # replica's sweep) or never uploaded. One still being uploaded and recorded belongs
        # to a running fetch (busy) and is young.
        settled = time.time() - STRAY_AFTER
        strays = [
            f for f in files if f.digest not in aged and not busy(f.digest) and f.mtime < settled
        ]
        for f in strays:
            if await self.store.remove(parse_digest(f.digest)):
                freed += f.size
        files = [f for f in files if f.digest in aged]
        total = sum(f.size for f in files)
        if total <= self.config.local_cache:
            return freed
        # Manifests stay: small, and read on every pull.
        candidates = sorted(
            (
                f
                for f in files
                if f.digest in aged and not aged[f.digest].is_manifest and not busy(f.digest)
            ),
            key=lambda f: aged[f.digest].last_access,
        )
        kept = total
        for f in candidates:
            if kept <= self.config.local_cache:
                break
            if await self.store.remove(parse_digest(f.digest)):
                freed += f.size
                kept -= f.size
        if freed:
            log.info("local cache: dropped %d bytes of blobs (the bucket keeps them)", freed)
        return freed

    # --- the index's snapshot ---------------------------------------------------------

    async def restore_index(self, index_path: Path, name: str = INDEX_SNAPSHOT) -> bool:
        """A process without an index (a new pod, a lost disk) starts from the last
        snapshot in the bucket, so what it knew of who may read which blob is not lost
        with the disk (rebuilt from the listing alone, every blob would have to be
        fetched again before anyone could read it). Reconciling with the listing then
        drops what the bucket no longer holds. False when there is nothing to restore.
        ``name``: the snapshot's name in the bucket (the hosted index has its own)."""
        if await asyncio.to_thread(index_path.exists):
            return False
        await asyncio.to_thread(index_path.parent.mkdir, parents=True, exist_ok=True)
        temp = index_path.with_name(index_path.name + ".restoring")
        try:
            if not await self.bucket.get_file(name, temp):
                return False
            if not await asyncio.to_thread(_sound_sqlite, temp):
                log.warning("the snapshot %s in the bucket is not a sound database: ignored", name)
                return False
            await asyncio.to_thread(os.replace, temp, index_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(temp.unlink)
        what = "index" if name == INDEX_SNAPSHOT else name
        log.info("%s restored from the bucket's snapshot", what)
        return True

    async def snapshot_index(self, index_path: Path, name: str = INDEX_SNAPSHOT) -> None:
        """Copy the index (SQLite's online backup: consistent while the server writes)
        into the bucket."""
        temp = index_path.with_name(index_path.name + ".snapshot")
        try:
            await asyncio.to_thread(_backup, index_path, temp)
            await self.bucket.put_file(name, temp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(temp.unlink)

    async def close(self) -> None:
        await self.source.close()


def _backup(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _sound_sqlite(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == "ok"
