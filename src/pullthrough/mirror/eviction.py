"""Eviction: content unused for longer than its TTL goes, and when the store passes
``mirror.maxsize`` the least recently used content goes until it is under a low-water mark.

TTLs count from the last access (not from the first fetch), and the TTL in force is read
at every pass, so a changed ``ttl`` applies to content already stored. A digest shared by
several upstreams lives as long as the longest of their TTLs (``0`` = forever).

Removing a file never breaks a transfer in progress (an unlinked file stays readable
through the descriptors already open), and the index entries of a pass go (in one
transaction) before its files, so the index never names a file that is gone; a request
that still finds no file refetches. A file is removed only if it is still the one the
pass decided on: ``pullthrough gc`` runs beside a server that may fetch the object again
meanwhile. Work per pass is bounded by ``mirror.gc_batch`` removals.

When several replicas share one store and index (cluster mode), one of them sweeps at a
time: ``turns`` says whose turn it is (a lease in Redis), and the others only learn from
it whether the store is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pullthrough.config import Config, StoreLimit
from pullthrough.errors import BucketUnavailable
from pullthrough.mirror.pins import all_pins, pinned_digests
from pullthrough.reference import Digest, parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import AgedBlob, IndexBackend

if TYPE_CHECKING:  # imported only with storage.s3 (it loads obstore)
    from pullthrough.mirror.bucket_tier import BucketTier

log = logging.getLogger(__name__)

# Eviction for size stops once the store is this far under the limit, so that it does not
# run again at the next fetch.
LOW_WATER = 0.9

# A file younger than this that the index does not name is left to its writer: a server
# (this one, a replica, or one beside ``pullthrough gc``) renames a fetched file into place
# and indexes it just after. Adopted and swept in between, it would be removed and then
# indexed again by that writer, an entry without a file. A file left by a crash at that
# moment is adopted by the next reconcile once it is this old.
ADOPT_AFTER = 60.0


@dataclass
class SweepReport:
    """What one pass did (or, dry, would do)."""

    expired: list[AgedBlob] = field(default_factory=list)
    evicted: list[AgedBlob] = field(default_factory=list)
    objects: int = 0
    stored_bytes: int = 0
    limit: int | None = None
    full: bool = False  # still over the limit after the pass
    pinned: int = 0  # objects kept for good (mirror.pins, pullthrough pin)
    pinned_bytes: int = 0

    @property
    def removed(self) -> list[AgedBlob]:
        return [*self.expired, *self.evicted]

    @property
    def freed_bytes(self) -> int:
        return sum(b.size for b in self.removed)


class SweepTurns(Protocol):
    """Who sweeps when several replicas share the store."""

    async def take(self) -> Literal["held", "new", "other"]:
        """Whether this replica sweeps now: "held" (as before), "new" (from now on: it
        reconciles first), or "other" (another replica does)."""
        ...

    async def publish(self, full: bool) -> None:
        """Tell the other replicas whether the store is over its limit."""
        ...

    async def shared_full(self) -> bool:
        """Whether the replica that sweeps found the store over its limit."""
        ...


class Sweeper:
    def __init__(
        self,
        *,
        store: BlobStore,
        index: IndexBackend,
        ttls: Mapping[str, float],
        default_ttl: float,
        limit: StoreLimit | None,
        batch: int,
        busy: Callable[[str], bool] = lambda digest: False,
        clock: Callable[[], float] = time.time,
        on_removed: Callable[[AgedBlob, str], None] | None = None,
        on_swept: Callable[[SweepReport], None] | None = None,
        turns: SweepTurns | None = None,
        pinned: Callable[[], Awaitable[set[str]]] | None = None,
        held: Callable[[list[str]], Awaitable[set[str]]] | None = None,
        bucket: BucketTier | None = None,
    ) -> None:
        self.on_swept = on_swept
        # storage.s3: the index is reconciled with the bucket (the local store is only a
        # cache), and what a pass removes is deleted from the bucket too.
        self.bucket = bucket
        # Of the digests a pass decided on, those held elsewhere (hosted repositories):
        # asked of the shared record, since another replica may have pushed one and this
        # replica's memory (``busy``) does not know; see ``_remove``.
        self.held = held
        # Digests never evicted; counted toward the limit all the same.
        self.pinned = pinned
        self.pinned_now: set[str] = set()  # as the last pass found them
        self.pins_over_limit = False
        self.turns = turns
        self.store = store
        self.index = index
        self.ttls = dict(ttls)
        self.default_ttl = default_ttl
        self.limit = limit
        self.batch = batch
        self.busy = busy
        self.clock = clock
        self.on_removed = on_removed
        self.full = False
        self.last: SweepReport | None = None
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Ask for a pass now rather than at the next interval (new content was stored)."""
        if self.limit is not None:
            self._nudged.set()

    @classmethod
    def for_config(
        cls, config: Config, *, store: BlobStore, index: IndexBackend, **hooks: Any
    ) -> Sweeper:
        """A sweeper with the TTLs, limit and batch ``config`` gives (server and gc alike);
        ``hooks`` are the optional keyword arguments (busy, on_removed, ...). Pinned
        content (``mirror.pins`` and ``pullthrough pin``) is never removed."""

        async def pinned() -> set[str]:
            pins = await all_pins(config.pins, index)
            return await pinned_digests(pins, index=index, store=store) if pins else set()

        hooks.setdefault("pinned", pinned)
        return cls(
            store=store,
            index=index,
            ttls={u.name: u.ttl for u in config.upstreams},
            default_ttl=config.upstream.ttl,
            limit=config.maxsize,
            batch=config.gc_batch,
            **hooks,
        )

    def ttl_of(self, blob: AgedBlob) -> float | None:
        """Seconds ``blob`` may go unused, None for never."""
        ttls = [self.ttls.get(u, self.default_ttl) for u in blob.upstreams] or [self.default_ttl]
        if any(t <= 0 for t in ttls):
            return None
        return max(ttls)

    async def reconcile(self) -> tuple[int, int]:
        """Make the index and the files agree: index verified files that have no entry (a
        crash between rename and index write; once ``ADOPT_AFTER`` old), forget entries
        (and tags) whose file is gone. Returns (adopted, forgotten)."""
        # Tags, then entries, then files: an object stored in between (file, then entry,
        # then tag) is then in none of the lists or in the later ones only, rather than
        # looking like a tag or an entry without its file.
        tagged = {row[3] for row in await self.index.catalog_rows()}
        known = await self.index.digests()
        if self.bucket is not None:
            try:
                files = {f.digest: f for f in await self.bucket.listing()}
            except BucketUnavailable as exc:
                log.warning("index not reconciled with the bucket: %s", exc.message)
                return 0, 0
        else:
            files = {f.digest: f for f in await asyncio.to_thread(self.store.scan)}
        adopted = 0
        settled = self.clock() - ADOPT_AFTER
        for digest in files.keys() - known:
            if files[digest].mtime > settled:
                continue
            await self.index.adopt(digest, files[digest].size, files[digest].mtime)
            adopted += 1
        forgotten = 0
        # A tag naming a digest that is neither indexed nor stored (written by an older
        # version beside a gc) goes too: served, it would be a miss anyway.
        for digest in (known | tagged) - files.keys():
            if not self.busy(digest):
                await self.index.forget(digest)
                forgotten += 1
        if adopted or forgotten:
            log.info(
                "index reconciled with the store: %d files adopted, %d entries dropped",
                adopted,
                forgotten,
            )
        return adopted, forgotten

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """One bounded pass: expired content first, then least recently used content while
        the store is over its limit."""
        await self.index.flush_access()
        report = SweepReport()
        # Read first: a pin list that cannot be read fails the pass (nothing is removed)
        # rather than counting as no pins.
        pinned = await self.pinned() if self.pinned is not None else set()
        self.pinned_now = pinned
        budget = self.batch
        now = self.clock()
        positive = [t for t in [*self.ttls.values(), self.default_ttl] if t > 0]
        if positive:
            candidates = await self.index.least_recent(
                budget + len(pinned), accessed_before=now - min(positive)
            )
            for blob in candidates:
                ttl = self.ttl_of(blob)
                if ttl is None or blob.last_access >= now - ttl or self.busy(blob.digest):
                    continue
                if blob.digest in pinned or budget <= 0:
                    continue
                report.expired.append(blob)
                budget -= 1

        # What the store holds once the expired content is gone (decided, not yet removed).
        report.objects, report.stored_bytes = await self.index.usage()
        report.objects -= len(report.expired)
        report.stored_bytes -= sum(b.size for b in report.expired)
        if self.limit is not None:
            capacity = await asyncio.to_thread(self.store.capacity)
            report.limit = self.limit.resolve(capacity)
            if pinned:
                await self._count_pinned(report, pinned)
            if report.stored_bytes > report.limit and budget > 0:
                await self._evict_for_size(report, budget, pinned)
            report.full = report.stored_bytes > report.limit
        if not dry_run:
            await self._remove(report)
        if report.full and not self.full:
            log.warning(
                "store is over mirror.maxsize (%d of %d bytes) and nothing more can be "
                "evicted now: new content is served without being kept",
                report.stored_bytes,
                report.limit,
            )
        over = report.limit is not None and report.pinned_bytes > report.limit
        if over and not self.pins_over_limit:
            log.warning(
                "pinned content alone (%d objects, %d bytes) is over mirror.maxsize (%d "
                "bytes): only unpinned content is evicted",
                report.pinned,
                report.pinned_bytes,
                report.limit,
            )
        self.pins_over_limit = over
        self.full = report.full
        self.last = report
        if self.on_swept is not None and not dry_run:
            self.on_swept(report)
        if report.removed:
            log.info(
                "sweep: %d expired, %d evicted for size, %d bytes freed; store holds %d "
                "objects, %d bytes",
                len(report.expired),
                len(report.evicted),
                report.freed_bytes,
                report.objects,
                report.stored_bytes,
            )
        return report

    async def _count_pinned(self, report: SweepReport, pinned: set[str]) -> None:
        for digest in pinned:
            record = await self.index.blob(digest)
            if record is not None:
                report.pinned += 1
                report.pinned_bytes += record.size

    async def _evict_for_size(self, report: SweepReport, budget: int, pinned: set[str]) -> None:
        assert report.limit is not None
        target = int(report.limit * LOW_WATER)
        removed = {b.digest for b in report.expired}
        candidates = await self.index.least_recent(
            budget + len(removed) + len(pinned), accessed_before=float("inf")
        )
        for blob in candidates:
            if report.stored_bytes <= target or budget <= 0:
                break
            if blob.digest in removed or blob.digest in pinned or self.busy(blob.digest):
                continue
            report.evicted.append(blob)
            report.stored_bytes -= blob.size
            report.objects -= 1
            budget -= 1

    async def _remove(self, report: SweepReport) -> None:
        """Remove what the pass decided on: every index entry in one transaction first
        (from then on nothing trusts them, and a request that wants one fetches it
        again), then the files, each only if it is still the file that was decided on
        (a copy fetched again meanwhile, by this process or another, is kept).

        With ``held`` (hosted repositories), what they hold is spared, asked twice: before
        the entries go, and again once the files are set aside, before they are unlinked.
        A push (through any replica) records its digest, then checks its file is in the
        store and puts it back if not: either the second question sees the record (the
        file goes back), or the file was set aside before the push looked (the push puts
        it back)."""
        removed = [(blob, "expired") for blob in report.expired]
        removed += [(blob, "evicted") for blob in report.evicted]
        if not removed:
            return
        digests = {blob.digest: parse_digest(blob.digest) for blob, _ in removed}
        files = await asyncio.to_thread(
            lambda: {text: self.store.identity_sync(d) for text, d in digests.items()}
        )
        if self.held is not None:
            keep = await self.held(list(digests))
            if keep:
                log.info("sweep: %d digest(s) held by hosted repositories: kept", len(keep))
                spared = [b for b, _ in removed if b.digest in keep]
                report.objects += len(spared)
                report.stored_bytes += sum(b.size for b in spared)
                report.expired = [b for b in report.expired if b.digest not in keep]
                report.evicted = [b for b in report.evicted if b.digest not in keep]
                removed = [(b, why) for b, why in removed if b.digest not in keep]
                if not removed:
                    return
        await self.index.forget_all(blob.digest for blob, _ in removed)
        if self.on_removed is not None:  # what this process remembers goes with the entries
            for blob, why in removed:
                self.on_removed(blob, why)
        if self.bucket is not None:
            for blob, _ in removed:
                await self.bucket.delete(blob.digest)
        if self.held is None:
            for blob, _ in removed:
                identity = files[blob.digest]
                if identity is not None:
                    await asyncio.to_thread(
                        self.store.remove_if_same_sync, digests[blob.digest], identity
                    )
            return
        await self._remove_unless_held(
            [(digests[b.digest], files[b.digest]) for b, _ in removed], self.held
        )

    async def _remove_unless_held(
        self,
        files: list[tuple[Digest, tuple[int, int] | None]],
        held: Callable[[list[str]], Awaitable[set[str]]],
    ) -> None:
        aside: list[tuple[Digest, Path]] = []
        try:
            for digest, identity in files:
                if identity is not None:
                    moved = await asyncio.to_thread(self.store.set_aside_sync, digest, identity)
                    if moved is not None:
                        aside.append((digest, moved))
            keep = await held([str(d) for d, _ in aside]) if aside else set()
        except BaseException:
            keep = {str(d) for d, _ in aside}  # not known to be free: every file goes back
            raise
        finally:
            for digest, moved in aside:
                if str(digest) in keep:
                    log.info("sweep: %s was pushed to a hosted repository meanwhile: kept", digest)
                    await asyncio.to_thread(self.store.put_back_sync, digest, moved)
                else:
                    await asyncio.to_thread(moved.unlink)

    async def run_forever(self, interval: float) -> None:
        """Reconcile once, then sweep every ``interval`` seconds until cancelled (with
        ``turns``: only in this replica's turn, reconciling when the turn comes)."""
        if self.turns is None:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconciling the index with the store failed")
        while True:
            try:
                if self.turns is None:
                    await self.sweep()
                else:
                    await self._sweep_in_turn(self.turns)
            except Exception:  # the next pass tries again; a failed pass removes nothing more
                log.exception("sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), interval)
            self._nudged.clear()

    async def _sweep_in_turn(self, turns: SweepTurns) -> None:
        turn = await turns.take()
        if turn == "other":
            self.full = await turns.shared_full()
            return
        if turn == "new":
            log.info("this replica sweeps the shared store now")
            await self.reconcile()
        await self.sweep()
        await turns.publish(self.full)
