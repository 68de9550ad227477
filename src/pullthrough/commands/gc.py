"""``pullthrough gc [CONFIG] [--dry-run]``: the server's eviction, run offline to the end."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from pullthrough.commands.hosted_gc import collect_hosted
from pullthrough.commands.offline import hosted_copy, open_store
from pullthrough.config import Config
from pullthrough.mirror.eviction import Sweeper, SweepReport
from pullthrough.store.blobs import BlobStore
from pullthrough.store.hosted_index import hosted_digests

if TYPE_CHECKING:
    from pullthrough.cluster.connection import Coordination

MAX_PASSES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")


def run(config: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_gc(config, dry_run=args.dry_run))


async def _gc(config: Config, *, dry_run: bool) -> int:
    async with open_store(config) as opened:
        if opened.coordination is not None and not dry_run:
            # Replicas take turns sweeping under a lease; gc takes a turn like any replica.
            holder = await _sweep_turn(opened.coordination, opened.store, config.gc_interval)
            if holder is not None:
                print(
                    f"pullthrough gc: replica {holder} holds the sweeper lease and sweeps every "
                    f"{config.gc_interval:g} s (mirror.gc_interval); gc removes nothing while "
                    "it does (--dry-run still reports)",
                    file=sys.stderr,
                )
                return 1
        kept: set[str] = set()
        if config.hosted is not None:
            async with hosted_copy(opened, write=not dry_run) as hosted_db:
                # First: what it releases is no longer protected from eviction below.
                hosted = await collect_hosted(
                    config, opened.store, opened.index, dry_run=dry_run, path=hosted_db
                )
                for line in hosted.lines(dry_run=dry_run):
                    print(line)
                # What hosted repositories hold is never evicted (their files are in the
                # same store, and reconciling may index them as cache entries).
                kept = await asyncio.to_thread(hosted_digests, hosted_db)
        # storage.s3: reconciled with the bucket, and what goes is deleted from it.
        tier = None
        if config.s3 is not None and opened.store.bucket is not None:
            from pullthrough.mirror.bucket_tier import BucketTier  # loads obstore

            tier = BucketTier(config.s3, opened.store.bucket, opened.store, opened.index)
        sweeper = Sweeper.for_config(
            config, store=opened.store, index=opened.index, busy=kept.__contains__, bucket=tier
        )
        if not dry_run:
            adopted, forgotten = await sweeper.reconcile()
            if adopted or forgotten:
                print(f"reconciled: {adopted} files indexed, {forgotten} stale entries dropped")
        total = SweepReport()
        for _ in range(MAX_PASSES):
            report = await sweeper.sweep(dry_run=dry_run)
            total.expired += report.expired
            total.evicted += report.evicted
            total.objects, total.stored_bytes, total.limit = (
                report.objects,
                report.stored_bytes,
                report.limit,
            )
            if dry_run or not report.removed:
                break
        verb = "would remove" if dry_run else "removed"
        for blob in total.removed:
            why = "expired" if blob in total.expired else "over maxsize"
            print(f"{verb} {blob.digest} ({blob.size} bytes, {why})")
        limit = f" of {total.limit}" if total.limit is not None else ""
        print(
            f"{verb} {len(total.removed)} objects, {total.freed_bytes} bytes; "
            f"store: {total.objects} objects, {total.stored_bytes}{limit} bytes"
        )
    return 0


async def _sweep_turn(coordination: Coordination, store: BlobStore, interval: float) -> str | None:
    """Take the cluster's sweeper lease; None when taken, else the replica holding it."""
    from pullthrough.cluster.connection import key
    from pullthrough.cluster.sweeping import SweepLease

    if await SweepLease(coordination, store, interval).take() != "other":
        return None
    token = await coordination.call(lambda r: r.get(key("sweeper")))
    return str(token or "unknown").split("#", 1)[0]
