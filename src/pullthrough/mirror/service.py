"""The mirror as one object: the store, the index, the upstream clients and the policies
that join them. The server holds one Mirror; nothing below it knows about HTTP routes.

With ``mirror.cluster`` the index is the shared one in Redis, fetches and manifest requests
are coalesced across replicas, and one replica sweeps at a time (``pullthrough.cluster``);
without it nothing of that is even imported."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pullthrough.config import Config, ConfigError
from pullthrough.errors import BucketUnavailable
from pullthrough.hosted.registry import HostedRegistry
from pullthrough.hosted.uploads import Uploads
from pullthrough.metrics import Metrics
from pullthrough.mirror.blobs import BlobService
from pullthrough.mirror.eviction import Sweeper, SweepReport
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.fetches import Fetches
from pullthrough.mirror.listing import Listing
from pullthrough.mirror.manifests import ManifestService
from pullthrough.mirror.offline import OfflineSwitches
from pullthrough.mirror.policy import Policy, denied
from pullthrough.mirror.policy_file import PolicyFile, warn_never_matching
from pullthrough.mirror.provenance import Provenance
from pullthrough.mirror.referrers import ReferrersService
from pullthrough.mirror.scrub import Scrubber
from pullthrough.mirror.upstreams import Upstreams
from pullthrough.reference import Digest
from pullthrough.singleflight import Trailing
from pullthrough.store.blobs import BlobStore
from pullthrough.store.hosted_index import HostedIndex
from pullthrough.store.index import AgedBlob, Index, IndexBackend

if TYPE_CHECKING:
    from pullthrough.cluster.node import Cluster
    from pullthrough.mirror.bucket_tier import BucketTier
    from pullthrough.store.bucket import Bucket

log = logging.getLogger(__name__)

ACCESS_FLUSH_INTERVAL = 5.0
# A multipart upload of ours older than this belongs to a process that died.
UPLOAD_MAX_AGE = 24 * 3600.0


class Mirror:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        bucket: Bucket | None = None
        if config.s3 is not None:
            from pullthrough.store.bucket import Bucket  # loads obstore: only with a bucket

            bucket = Bucket(config.s3)
        self.store = BlobStore(config.root, bucket)
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
        # storage.s3: the bucket keeps every blob; the store above is this process's cache.
        self.bucket_tier: BucketTier | None = None
        if config.s3 is not None and bucket is not None:
            from pullthrough.mirror.bucket_tier import BucketTier

            self.bucket_tier = BucketTier(config.s3, bucket, self.store, self.index)
        self.upstreams = Upstreams(config, self.metrics)
        self.offline = OfflineSwitches(index=self.index, upstreams=self.upstreams)
        # Who may read which digest: every read path below asks this one object.
        hosted_index: HostedIndex | None = None
        if config.hosted is not None:
            if self.cluster is not None and self.bucket_tier is not None:
                # Replicas on a bucket: each its own copy, the bucket's shared through Redis.
                from pullthrough.cluster.hosted_index import SharedHostedIndex

                hosted_index = SharedHostedIndex(
                    self._hosted_path, self.cluster.coordination, self.bucket_tier
                )
            else:
                hosted_index = HostedIndex(self._hosted_path)
        self.provenance = Provenance(self.index, hosted_index)
        # What may be mirrored at all (mirror.policy); replaced whole when re-read.
        self.policy = Policy(config.policy)
        self.policy_file = (
            PolicyFile(
                config.path,
                self._set_policy,
                upstreams=tuple(u.name for u in config.upstreams),
                any_upstream=config.allow_any_upstream,
            )
            if config.path is not None
            else None
        )
        self.fetches = Fetches(
            self.store,
            self._blob_stored,
            self.metrics,
            drive=self._cluster_drive(),
        )
        # Over mirror.maxsize with nothing left to evict: new fetches keep nothing.
        # Pinned content is kept all the same: the operator asked for it to be kept for good.
        self.fetches.keep = lambda d: not self.sweeper.full or str(d) in self.sweeper.pinned_now
        # Listing is annotated with the SQLite Index; it uses only what IndexBackend
        # declares, which the Redis index implements as well.
        self.blobs = BlobService(
            store=self.store,
            index=self.index,
            provenance=self.provenance,
            fetches=self.fetches,
            metrics=self.metrics,
            bucket=self.bucket_tier,
        )
        self.manifests = ManifestService(
            store=self.store,
            index=self.index,
            provenance=self.provenance,
            metrics=self.metrics,
            flights=self.cluster.flights if self.cluster else None,
            quarantine=self.quarantine,
        )
        self.referrers = ReferrersService(manifests=self.manifests)
        self.listing = Listing(index=cast(Index, self.index))
        # Hosted repositories (mirror.hosted): pushed content, in the same store, kept.
        self.hosted: HostedRegistry | None = None
        self.uploads: Uploads | None = None
        if config.hosted is not None:
            # storage.s3: what the local cache lacks is read from the bucket, and the
            # hosted index is copied into the bucket before a push or delete is answered.
            tier = self.bucket_tier
            self.hosted = HostedRegistry(
                config=config.hosted,
                store=self.store,
                index=cast(HostedIndex, hosted_index),
                provenance=self.provenance,
                remote=self.blobs.from_bucket if tier is not None else None,
                saved=(
                    Trailing(self._snapshot_hosted)
                    if tier is not None and self.cluster is None
                    else None
                ),
            )
            self.uploads = Uploads(
                root=config.root,
                store=self.store,
                idle=config.hosted.upload_idle,
                per_client=config.hosted.max_uploads_per_client,
            )
            if self.cluster is not None and tier is not None:
                from pullthrough.cluster.upload_owners import UploadOwners

                self.uploads.owners = UploadOwners(
                    self.cluster.coordination, config.hosted.upload_idle
                )
        self.sweeper = Sweeper.for_config(
            config,
            store=self.store,
            index=self.index,
            busy=self._busy,
            on_removed=self._removed,
            on_swept=self._swept,
            turns=self.cluster.sweep_turns if self.cluster else None,
            held=hosted_index.held if hosted_index is not None else None,
            bucket=self.bucket_tier,
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

    async def start(self, *, schedule: bool = False) -> None:
        """Open the store and start the background work. ``schedule``: also run
        ``mirror.sync`` on its schedule (the server; commands that open the store do not)."""
        if self.cluster is None:
            await asyncio.to_thread(self.store.prepare)
        else:
            await self.cluster.start()  # the shared temp directory is not emptied
        if self.bucket_tier is not None:
            try:
                await self.bucket_tier.bucket.check_access()
            except BucketUnavailable as exc:
                raise ConfigError(f"storage.s3: {exc.message}") from None
        if self.bucket_tier is not None and self.cluster is None:
            # One process: its SQLite index outlives its disk in the bucket (a cluster's
            # index is in Redis).
            try:
                await self.bucket_tier.restore_index(self.config.index_path)
            except BucketUnavailable as exc:
                log.warning("index not restored from the bucket: %s", exc.message)
            if self.hosted is not None:
                # Unlike the cache's index, this one cannot be rebuilt from the upstreams:
                # without its copy, start no further (pushed tags would seem gone).
                from pullthrough.mirror.bucket_tier import HOSTED_SNAPSHOT

                try:
                    await self.bucket_tier.restore_index(self._hosted_path, HOSTED_SNAPSHOT)
                except BucketUnavailable as exc:
                    raise ConfigError(
                        f"storage.s3: the hosted repositories' index could not be read from "
                        f"the bucket: {exc.message}"
                    ) from None
        await self.index.open()
        if self.hosted is not None and self.uploads is not None:
            # Before the sweeper's first pass: it must know what is kept.
            await asyncio.to_thread(self.uploads.prepare)
            await self.hosted.start()
        await self.offline.apply()  # a switch set while this server was down holds from the start
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self.offline.run_forever()),
            loop.create_task(self._flush_forever()),
            loop.create_task(self.sweeper.run_forever(self.config.gc_interval)),
        ]
        if self.bucket_tier is not None:
            self._background.append(loop.create_task(self._trim_forever()))
            if self.cluster is None:
                self._background.append(loop.create_task(self._snapshot_forever()))
            self._background.append(loop.create_task(self._sweep_uploads_forever()))
        if self.config.allow_any_upstream:
            self._background.append(loop.create_task(self._reclaim_forever()))
        if self.policy_file is not None:
            self._background.append(loop.create_task(self.policy_file.watch()))
        warn_never_matching(
            self.policy,
            tuple(u.name for u in self.config.upstreams),
            any_upstream=self.config.allow_any_upstream,
        )
        if self.scrubber is not None:
            self._background.append(loop.create_task(self.scrubber.run_forever()))
        if self.uploads is not None:
            self._background.append(loop.create_task(self._expire_uploads_forever()))
        if schedule and self.config.sync:
            from pullthrough.mirror.sync import Syncer

            claims = self.cluster.sync_claims if self.cluster is not None else None
            self._background.append(loop.create_task(Syncer(self, claims=claims).run_forever()))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.fetches.wait_all(seconds=5.0)
        await self.upstreams.close()
        await self.index.close()
        if self.bucket_tier is not None:
            if self.cluster is None:
                await self._snapshot()  # what this process learnt outlives its disk
            await self.bucket_tier.close()
        if self.hosted is not None:
            await self.hosted.index.close()
        if self.cluster is not None:
            await self.cluster.stop()

    def _cluster_drive(self) -> Callable[[Fetch], Awaitable[None]] | None:
        """How this replica's fetches are coordinated with the others': over a shared
        store, or over a bucket (storage.s3); None in one process."""
        if self.cluster is None:
            return None
        if self.bucket_tier is not None:
            return self.cluster.bucket_fetches(self.provenance, self.bucket_tier).run
        return self.cluster.fetches(self.provenance).run

    def _busy(self, digest: str) -> bool:
        """Not to be evicted now: a download is under way, or a hosted repository holds
        it (hosted content is removed only by gc, when nothing references it)."""
        return self.fetches.busy(digest) or (
            self.hosted is not None and digest in self.hosted.kept
        )

    def _uploading(self, digest: str) -> bool:
        """A download, or a pushed blob, is on its way into the bucket: its local file
        stays until it is there."""
        return self.fetches.busy(digest) or (
            self.hosted is not None and digest in self.hosted.uploading
        )

    async def _trim_forever(self) -> None:
        """Keep the local cache in front of the bucket within its size."""
        assert self.bucket_tier is not None
        while True:
            await asyncio.sleep(min(self.config.gc_interval, 30.0))
            try:
                await self.bucket_tier.trim(self._uploading)
            except Exception:  # try again next time
                log.exception("trimming the local cache failed")

    async def _sweep_uploads_forever(self) -> None:
        """Abort multipart uploads a crash left in the bucket (ours: under its root
        directory, started a day ago or more), a minute after start and every 6 hours."""
        from pullthrough.store.bucket_uploads import BucketUploads

        assert self.bucket_tier is not None
        uploads = BucketUploads(self.bucket_tier.bucket.config)  # (with profile keys)
        if not uploads.can_sign:
            log.info(
                "storage.s3 without accesskey/secretkey: uploads a crash leaves in the bucket "
                "are not swept; give the bucket an AbortIncompleteMultipartUpload lifecycle rule"
            )
            return
        await asyncio.sleep(60.0)
        while True:
            try:
                await uploads.sweep(older_than=UPLOAD_MAX_AGE)
            except BucketUnavailable as exc:
                log.warning("multipart uploads not swept: %s", exc.message)
            await asyncio.sleep(6 * 3600.0)

    async def _snapshot_forever(self) -> None:
        from pullthrough.mirror.bucket_tier import SNAPSHOT_INTERVAL

        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            await self._snapshot()

    async def _snapshot(self) -> None:
        assert self.bucket_tier is not None
        try:
            await self.bucket_tier.snapshot_index(self.config.index_path)
        except (BucketUnavailable, OSError, sqlite3.Error) as exc:
            log.warning("index snapshot not written to the bucket: %s", exc)
        if self.hosted is not None and self.hosted.saved is not None:
            try:
                await self.hosted.saved()
            except (BucketUnavailable, OSError, sqlite3.Error) as exc:
                log.warning("hosted index snapshot not written to the bucket: %s", exc)

    @property
    def _hosted_path(self) -> Path:
        return self.config.root / "hosted.db"

    async def _snapshot_hosted(self) -> None:
        """The hosted index's copy in the bucket (storage.s3, one process)."""
        from pullthrough.mirror.bucket_tier import HOSTED_SNAPSHOT

        assert self.bucket_tier is not None
        await self.bucket_tier.snapshot_index(self._hosted_path, HOSTED_SNAPSHOT)

    async def _expire_uploads_forever(self) -> None:
        assert self.uploads is not None
        interval = min(max(self.uploads.idle / 2, 0.5), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.uploads.expire()
            except Exception:  # try again next time
                log.exception("removing idle upload sessions failed")

    async def permit(
        self,
        upstream: str,
        repo: str,
        name: str,
        *,
        tag: str | None = None,
        digest: str | None = None,
    ) -> None:
        """Raises Denied when ``mirror.policy`` does not let ``repo`` of ``upstream`` be
        mirrored (``tag``: a manifest by tag; ``digest``: a manifest by digest, which
        must have been reached through an allowed tag when tag rules apply). Asked
        before the store or the upstream is: a denied request costs the upstream nothing."""
        policy = self.policy
        if not policy.active:
            return
        if tag is not None:
            policy.check_tag(upstream, repo, tag, name)
            return
        policy.check_repository(upstream, repo, name)
        rule = policy.first_tag_rule(upstream, repo) if digest is not None else None
        if digest is None or rule is None:
            return
        reached = await self.provenance.reached_through(
            upstream,
            repo,
            digest,
            tag_allowed=lambda t: policy.tag_allowed(upstream, repo, t),
            listed_by=self.manifests.listed_by,
        )
        if not reached:
            raise denied(
                f"manifest {digest} of {upstream}/{repo}, not reached through an allowed tag,",
                rule,
                name,
            )

    def _set_policy(self, policy: Policy) -> None:
        self.policy = policy

    async def _blob_stored(self, fetch: Fetch) -> None:
        tier = self.bucket_tier
        if tier is not None:
            if tier.from_bucket(fetch):
                return  # read back from the bucket into the local cache: known already
            if fetch.source is not fetch.upstream:
                # Streamed from the replica that fetches it (cluster.peers): that one
                # uploads it and records it in the shared index. Remembered here so this
                # replica serves its copy meanwhile (and with Redis down).
                self.provenance.followed(fetch.upstream.name, fetch.repo, str(fetch.digest))
                return
            try:
                await tier.upload(fetch)
            except BucketUnavailable as exc:
                # Its clients have their bytes; unrecorded, the next request fetches again.
                log.warning("%s is not kept: %s", fetch.digest, exc.message)
                return
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
        self.metrics.pinned_bytes.set(report.pinned_bytes)
        self.metrics.pins_over_limit.set(int(self.sweeper.pins_over_limit))
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
