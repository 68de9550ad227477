"""The mirror as one object: the store, the index, the upstream clients and the policies
that join them. The server holds one Mirror; nothing below it knows about HTTP routes.

With ``mirror.cluster`` the index is the shared one in Redis, fetches and manifest requests
are coalesced across replicas, and one replica sweeps at a time (``pullthrough.cluster``);
without it nothing of that is even imported."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from pullthrough.config import Config
from pullthrough.metrics import Metrics
from pullthrough.mirror.blobs import BlobService
from pullthrough.mirror.eviction import Sweeper, SweepReport
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.fetches import Fetches
from pullthrough.mirror.listing import Listing
from pullthrough.mirror.manifests import ManifestService
from pullthrough.mirror.provenance import Provenance
from pullthrough.mirror.scrub import Scrubber
from pullthrough.mirror.upstreams import Upstreams
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import AgedBlob, Index, IndexBackend

if TYPE_CHECKING:
    from pullthrough.cluster.node import Cluster

log = logging.getLogger(__name__)

ACCESS_FLUSH_INTERVAL = 5.0


class Mirror:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = BlobStore(config.root)
        self.cluster: Cluster | None = None
        self.index: IndexBackend
        if config.cluster is None:
            self.index = Index(config.index_path)
        else:
            from pullthrough.cluster.node import Cluster

            self.cluster = Cluster(
                config.cluster, self.store, gc_interval=config.gc_interval, metrics=self.metrics
            )
            self.index = self.cluster.index
        self.upstreams = Upstreams(config, self.metrics)
        # Who may read which digest: every read path below asks this one object.
        self.provenance = Provenance(self.index)
        self.fetches = Fetches(
            self.store,
            self._blob_stored,
            self.metrics,
            drive=self.cluster.fetches(self.provenance).run if self.cluster else None,
        )
        # Over mirror.maxsize with nothing left to evict: new fetches keep nothing.
        self.fetches.keep = lambda: not self.sweeper.full
        # Listing is annotated with the SQLite Index; it uses only what IndexBackend
        # declares, which the Redis index implements as well.
        self.blobs = BlobService(
            store=self.store,
            index=self.index,
            provenance=self.provenance,
            fetches=self.fetches,
            metrics=self.metrics,
        )
        self.manifests = ManifestService(
            store=self.store,
            index=self.index,
            provenance=self.provenance,
            metrics=self.metrics,
            flights=self.cluster.flights if self.cluster else None,
            quarantine=self.quarantine,
        )
        self.listing = Listing(index=cast(Index, self.index))
        self.sweeper = Sweeper.for_config(
            config,
            store=self.store,
            index=self.index,
            busy=self.fetches.busy,
            on_removed=self._removed,
            on_swept=self._swept,
            turns=self.cluster.sweep_turns if self.cluster else None,
        )
        # Re-hashes the store in the background for bit rot that changes no metadata.
        self.scrubber = (
            Scrubber(
                store=self.store,
                rate=config.scrub_rate,
                interval=config.verify_interval,
                quarantine=self.quarantine,
                metrics=self.metrics,
            )
            if config.scrub_rate > 0
            else None
        )
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.cluster is None:
            await asyncio.to_thread(self.store.prepare)
        else:
            await self.cluster.start()  # the shared temp directory is not emptied
        await self.index.open()
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._flush_forever()),
            loop.create_task(self.sweeper.run_forever(self.config.gc_interval)),
        ]
        if self.config.allow_any_upstream:
            self._background.append(loop.create_task(self._reclaim_forever()))
        if self.scrubber is not None:
            self._background.append(loop.create_task(self.scrubber.run_forever()))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.fetches.wait_all(seconds=5.0)
        await self.upstreams.close()
        await self.index.close()
        if self.cluster is not None:
            await self.cluster.stop()

    async def _blob_stored(self, fetch: Fetch) -> None:
        await self.provenance.served(
            fetch.upstream.name, fetch.repo, str(fetch.digest), fetch.written
        )
        # Kept current between sweeps (which set them from the index).
        self.metrics.store_objects.inc()
        self.metrics.store_bytes.inc(fetch.written)
        self.sweeper.nudge()

    async def quarantine(self, digest: Digest) -> None:
        """A stored file no longer matches its digest: drop it (index first), so the next
        request fetches it again."""
        self.metrics.evictions.labels("corrupt").inc()
        self.manifests.recent.forget(str(digest))
        self.provenance.forget(str(digest))
        await self.index.forget(str(digest))
        await self.store.remove(digest)

    def _removed(self, blob: AgedBlob, reason: str) -> None:
        self.manifests.recent.forget(blob.digest)
        self.provenance.forget(blob.digest)
        self.metrics.evictions.labels(reason).inc()
        self.metrics.evicted_bytes.labels(reason).inc(blob.size)
        self.metrics.store_objects.dec()
        self.metrics.store_bytes.dec(blob.size)

    def _swept(self, report: SweepReport) -> None:
        self.metrics.store_objects.set(report.objects)
        self.metrics.store_bytes.set(report.stored_bytes)
        if report.limit is not None:
            self.metrics.store_limit_bytes.set(report.limit)

    async def _reclaim_forever(self) -> None:
        """Give back idle ad-hoc upstream slots and close their connections, also when no
        new registry is asked for (a new one reclaims idle slots itself)."""
        interval = min(max(self.config.adhoc_idle / 2, 0.1), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                given_back = await self.upstreams.reclaim()
            except Exception:  # try again next time; a failed close only delays it
                log.exception("giving back idle ad-hoc upstream slots failed")
                continue
            if given_back:
                log.debug("gave back %d idle ad-hoc upstream slot(s)", given_back)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_INTERVAL)
            try:
                await self.index.flush_access()
            except Exception:  # keep flushing later; a failed batch only loses access times
                log.exception("flushing access times failed")
