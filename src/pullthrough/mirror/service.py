"""The mirror as one object: the store, the index, the upstream clients and the policies
that join them. The server holds one Mirror; nothing below it knows about HTTP routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pullthrough.config import Config
from pullthrough.metrics import Metrics
from pullthrough.mirror.blobs import BlobService
from pullthrough.mirror.eviction import Sweeper, SweepReport
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.fetches import Fetches
from pullthrough.mirror.listing import Listing
from pullthrough.mirror.manifests import ManifestService
from pullthrough.mirror.upstreams import Upstreams
from pullthrough.reference import Digest, parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import AgedBlob, Index

log = logging.getLogger(__name__)

ACCESS_FLUSH_INTERVAL = 5.0


class Mirror:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = BlobStore(config.root)
        self.index = Index(config.index_path)
        self.upstreams = Upstreams(config, self.metrics)
        self.fetches = Fetches(self.store, self._blob_stored, self.metrics)
        # Over mirror.maxsize with nothing left to evict: new fetches keep nothing.
        self.fetches.keep = lambda: not self.sweeper.full
        self.blobs = BlobService(
            store=self.store, index=self.index, fetches=self.fetches, metrics=self.metrics
        )
        self.manifests = ManifestService(store=self.store, index=self.index, metrics=self.metrics)
        self.listing = Listing(index=self.index)
        self.sweeper = Sweeper(
            store=self.store,
            index=self.index,
            ttls={u.name: u.ttl for u in config.upstreams},
            default_ttl=config.upstream.ttl,
            limit=config.maxsize,
            batch=config.gc_batch,
            busy=lambda digest: self.fetches.get(parse_digest(digest)) is not None,
            on_removed=self._removed,
            on_swept=self._swept,
        )
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await asyncio.to_thread(self.store.prepare)
        await self.index.open()
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._flush_forever()),
            loop.create_task(self.sweeper.run_forever(self.config.gc_interval)),
        ]

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.fetches.wait_all(seconds=5.0)
        await self.upstreams.close()
        await self.index.close()

    async def _blob_stored(self, fetch: Fetch) -> None:
        await self.index.record(
            str(fetch.digest),
            fetch.written,
            media_type=None,
            upstream=fetch.upstream.name,
            repo=fetch.repo,
        )
        # Kept current between sweeps (which set them from the index).
        self.metrics.store_objects.inc()
        self.metrics.store_bytes.inc(fetch.written)
        self.sweeper.nudge()

    async def quarantine(self, digest: Digest) -> None:
        """A stored file no longer matches its digest: drop it (index first), so the next
        request fetches it again."""
        self.metrics.evictions.labels("corrupt").inc()
        await self.index.forget(str(digest))
        await self.store.remove(digest)

    def _removed(self, blob: AgedBlob, reason: str) -> None:
        self.metrics.evictions.labels(reason).inc()
        self.metrics.evicted_bytes.labels(reason).inc(blob.size)
        self.metrics.store_objects.dec()
        self.metrics.store_bytes.dec(blob.size)

    def _swept(self, report: SweepReport) -> None:
        self.metrics.store_objects.set(report.objects)
        self.metrics.store_bytes.set(report.stored_bytes)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_INTERVAL)
            try:
                await self.index.flush_access()
            except Exception:  # keep flushing later; a failed batch only loses access times
                log.exception("flushing access times failed")
