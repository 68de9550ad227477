"""Blob policy: serve from the store when ``mirror.provenance`` says this (upstream,
repository) may read it, else join or start that upstream's one fetch of the digest.

A blob stored because another upstream brought it is a miss here: this upstream serves it
again (verified; the file on disk stays one) before any of its clients reads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pullthrough.errors import BlobUnknown
from pullthrough.metrics import Metrics
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.fetches import Fetches
from pullthrough.mirror.provenance import Kind, Provenance, unknown
from pullthrough.mirror.taps import Tap
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore, OpenBlob
from pullthrough.store.index import IndexBackend
from pullthrough.upstream.client import UpstreamClient

if TYPE_CHECKING:  # imported only with storage.s3 (it loads obstore)
    from pullthrough.mirror.bucket_tier import BucketTier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BlobBody:
    """Where a blob's bytes come from: a verified file, or a fetch still in progress (with
    this reader's tap, for bytes the fetch cannot put on disk)."""

    digest: Digest
    size: int | None
    cached: OpenBlob | None = None
    fetch: Fetch | None = None
    tap: Tap | None = None
    redirect: str | None = None  # storage.s3: a presigned URL the client reads it from


class BlobService:
    def __init__(
        self,
        *,
        store: BlobStore,
        index: IndexBackend,
        provenance: Provenance,
        fetches: Fetches,
        metrics: Metrics,
        bucket: BucketTier | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.provenance = provenance
        self.fetches = fetches
        self.metrics = metrics
        self.bucket = bucket  # storage.s3: what the local cache lacks, the bucket has

    async def get(self, upstream: UpstreamClient, repo: str, digest: Digest) -> BlobBody:
        """The blob for a GET: the cached file, or the upstream's (shared) fetch after the
        upstream answered. Raises BlobUnknown, UpstreamUnavailable, TooManyRequests."""
        cached = await self._readable(upstream, repo, digest)
        if cached is not None:
            self.index.touch(str(digest))
            self.metrics.cache.labels("blob", "hit", upstream.name).inc()
            return BlobBody(digest, cached.size, cached=cached)
        remote = await self._in_bucket(upstream, repo, digest)
        if remote is not None:
            self.index.touch(str(digest))
            self.metrics.cache.labels("blob", "hit", upstream.name).inc()
            return await self.from_bucket(repo, digest, remote)
        self.metrics.cache.labels("blob", "miss", upstream.name).inc()
        fetch = self.fetches.get(upstream, digest)
        if fetch is not None and fetch.repo != repo:
            # The upstream is downloading it for another repository: this one may share
            # those bytes once the upstream says it holds them too.
            await self.provenance.confirm(upstream, repo, str(digest), Kind.BLOB)
            fetch = self.fetches.get(upstream, digest)  # it may have ended while we asked
        if fetch is None:
            log.info("cache miss: blob %s for %s/%s", digest, upstream.name, repo)
            fetch = self.fetches.start(digest, upstream, repo)
        else:
            self.metrics.coalesced.labels("blob").inc()
        return await _reader_of(fetch)

    async def head(self, upstream: UpstreamClient, repo: str, digest: Digest) -> int | None:
        """The blob's size for a HEAD; asks the upstream with a HEAD when this repository
        may not read a stored copy, and never downloads. None when the size is not known
        (the upstream did not say)."""
        cached = await self._readable(upstream, repo, digest)
        if cached is not None:
            cached.close()
            self.index.touch(str(digest))
            return cached.size
        remote = await self._in_bucket(upstream, repo, digest)
        if remote is not None:
            self.index.touch(str(digest))
            return remote
        size = await upstream.head_blob(repo, str(digest))
        if size is None:
            raise unknown(Kind.BLOB, upstream.name, repo, str(digest))
        return None if size < 0 else size

    async def for_peer(self, upstream: str, digest: Digest) -> BlobBody:
        """What another replica on the same bucket streams from this one
        (``cluster.peers``): this process's running fetch of ``digest`` from ``upstream``
        (its last byte once the digest matched, as for a client), or its local copy once
        stored. No provenance here: the asking replica decided who may read the blob
        before it asked, and verifies the bytes itself."""
        fetch = self.fetches.named(upstream, digest)
        if fetch is not None:
            return await _reader_of(fetch)
        cached = await self.store.open(digest)
        if cached is None:
            raise BlobUnknown(f"blob {digest} is neither being fetched nor stored here")
        return BlobBody(digest, cached.size, cached=cached)

    async def _readable(
        self, upstream: UpstreamClient, repo: str, digest: Digest
    ) -> OpenBlob | None:
        """The stored file, open, if this (upstream, repository) may read it."""
        cached = await self.store.open(digest)
        if cached is None:
            if self.bucket is None:
                # Gone (perhaps removed by ``pullthrough gc`` in another process): whatever
                # was remembered about who may read it no longer stands.
                self.provenance.forget(str(digest))
            return None
        try:
            if await self.provenance.readable(upstream, repo, str(digest), Kind.BLOB):
                return cached
        except BaseException:
            cached.close()
            raise
        cached.close()
        log.info(
            "blob %s is stored, but %s never served it: a miss for %s", digest, upstream.name, repo
        )
        return None

    async def _in_bucket(self, upstream: UpstreamClient, repo: str, digest: Digest) -> int | None:
        """storage.s3: the blob's size if the bucket holds it and this (upstream,
        repository) may read it; None otherwise (then it is a miss, as without a bucket)."""
        if self.bucket is None:
            return None
        size = await self.bucket.size(digest)
        if size is None:
            return None
        if not await self.provenance.readable(upstream, repo, str(digest), Kind.BLOB):
            log.info(
                "blob %s is in the bucket, but %s never served it: a miss for %s",
                digest,
                upstream.name,
                repo,
            )
            return None
        return size

    async def from_bucket(self, repo: str, digest: Digest, size: int) -> BlobBody:
        """A presigned URL to the object (``storage.redirect``), or the bucket's bytes
        streamed through this process (and into its local cache), verified as an
        upstream's are. The caller has decided that ``repo`` may read it."""
        assert self.bucket is not None
        if self.bucket.config.redirect:
            return BlobBody(digest, size, redirect=await self.bucket.url(digest))
        source = self.bucket.client_of()
        fetch = self.fetches.get(source, digest)
        if fetch is None:
            fetch = self.fetches.start(digest, source, repo)
        return await _reader_of(fetch)


async def _reader_of(fetch: Fetch) -> BlobBody:
    """A new reader of ``fetch``, once its source has answered."""
    tap = fetch.attach()  # before any await: no byte may pass this reader by
    try:
        await fetch.started()
    except BaseException:
        fetch.detach(tap)
        raise
    return BlobBody(fetch.digest, fetch.size, fetch=fetch, tap=tap)


async def open_fetch_file(fetch: Fetch) -> int:
    """A read-only descriptor of the fetch's bytes: its temp file, or the final file if the
    fetch already renamed it into place (the rename keeps open descriptors valid)."""

    def work() -> int:
        for path in (fetch.temp_path, fetch.final_path):
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
        if fetch.error is not None:
            raise fetch.error  # it failed (and removed its temp file) before we opened it
        if fetch.spilled_at == 0:
            return -1  # it never wrote a byte to disk: everything comes through the tap
        raise BlobUnknown(f"blob {fetch.digest} vanished while being fetched")

    return await asyncio.to_thread(work)
