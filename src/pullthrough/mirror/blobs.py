"""Blob policy: serve from the store when present, else join or start the one fetch.

A blob is served for a repository only if it was fetched for that repository (or a
manifest of it referenced the blob) or the upstream confirms the repository holds it:
content addressing must not let a client read another repository's private blob.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from pullthrough.errors import BlobUnknown
from pullthrough.metrics import Metrics
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.fetches import Fetches
from pullthrough.mirror.taps import Tap
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore, OpenBlob
from pullthrough.store.index import Index
from pullthrough.upstream.client import UpstreamClient

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


class BlobService:
    def __init__(
        self, *, store: BlobStore, index: Index, fetches: Fetches, metrics: Metrics
    ) -> None:
        self.store = store
        self.index = index
        self.fetches = fetches
        self.metrics = metrics

    async def get(self, upstream: UpstreamClient, repo: str, digest: Digest) -> BlobBody:
        """The blob for a GET: the cached file, or the (shared) fetch after the upstream
        answered. Raises BlobUnknown, UpstreamUnavailable, TooManyRequests."""
        cached = await self.store.open(digest)
        if cached is not None:
            try:
                await self._authorize(upstream, repo, digest)
            except BaseException:
                cached.close()
                raise
            self.index.touch(str(digest))
            self.metrics.cache.labels("blob", "hit", upstream.name).inc()
            return BlobBody(digest, cached.size, cached=cached)
        self.metrics.cache.labels("blob", "miss", upstream.name).inc()
        fetch = self.fetches.get(digest)
        if fetch is not None and (fetch.upstream is not upstream or fetch.repo != repo):
            await self._authorize(upstream, repo, digest)
            fetch = self.fetches.get(digest)  # it may have ended while we asked
        if fetch is None:
            log.info("cache miss: blob %s for %s/%s", digest, upstream.name, repo)
            fetch = self.fetches.start(digest, upstream, repo)
        else:
            self.metrics.coalesced.labels("blob").inc()
        tap = fetch.attach()  # before any await: no byte may pass this reader by
        try:
            await fetch.started()
        except BaseException:
            fetch.detach(tap)
            raise
        return BlobBody(digest, fetch.size, fetch=fetch, tap=tap)

    async def head(self, upstream: UpstreamClient, repo: str, digest: Digest) -> int | None:
        """The blob's size for a HEAD; asks the upstream with a HEAD on a miss and never
        downloads. None when the size is not known (upstream did not say)."""
        cached = await self.store.open(digest)
        if cached is not None:
            cached.close()
            await self._authorize(upstream, repo, digest)
            self.index.touch(str(digest))
            return cached.size
        size = await upstream.head_blob(repo, str(digest))
        if size is None:
            raise _unknown(digest, upstream, repo)
        return None if size < 0 else size

    async def _authorize(self, upstream: UpstreamClient, repo: str, digest: Digest) -> None:
        if await self.index.is_linked(upstream.name, repo, str(digest)):
            return
        size = await upstream.head_blob(repo, str(digest))
        if size is None:
            raise _unknown(digest, upstream, repo)
        await self.index.link(upstream.name, repo, str(digest))


def _unknown(digest: Digest, upstream: UpstreamClient, repo: str) -> BlobUnknown:
    return BlobUnknown(
        f"blob {digest} is unknown to repository {repo} on upstream {upstream.name}",
        detail={"digest": str(digest)},
    )


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
