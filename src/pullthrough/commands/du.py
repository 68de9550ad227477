"""``pullthrough du [CONFIG] [--json]``: how much the store holds, by upstream and repository.

A blob two repositories share counts in each of them (either would need it alone) and
once in its upstream's subtotal and in the total, which is what the store really holds.
The total comes from the index; the files under ``blobs/`` are counted separately, so a
disagreement between the two (a crash, a hand-deleted file) shows. Hosted repositories
(``mirror.hosted``) are counted apart, from ``hosted.db``; the total and the files on disk
include their objects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from pullthrough.commands.offline import has_index, hosted_copy, open_store
from pullthrough.config import Config
from pullthrough.progress import human
from pullthrough.store.blobs import BlobStore
from pullthrough.store.hosted_inventory import HostedInventory, read_inventory
from pullthrough.store.inventory import DiskUsage, disk_usage, stored_objects, table


@dataclass(frozen=True, slots=True)
class Usage:
    objects: int
    bytes: int


@dataclass
class Report:
    repositories: list[tuple[str, str, Usage]]
    upstreams: list[tuple[str, Usage]]
    unlinked: Usage  # stored objects no repository links to (files adopted after a crash)
    total: Usage
    disk: DiskUsage
    limit: int | None
    limit_setting: str | None
    hosted: HostedInventory | None = None  # None: no mirror.hosted

    def as_json(self, config: Config) -> dict[str, Any]:
        return {
            "repositories": [
                {"upstream": u, "repository": r, **asdict(usage)}
                for u, r, usage in self.repositories
            ],
            "upstreams": [{"upstream": u, **asdict(usage)} for u, usage in self.upstreams],
            "unlinked": asdict(self.unlinked),
            "total": asdict(self.total),
            "disk": {"path": str(BlobStore(config.root).blob_dir), **asdict(self.disk)},
            "maxsize": None
            if self.limit is None
            else {"bytes": self.limit, "setting": self.limit_setting},
            **(
                {}
                if self.hosted is None
                else {
                    "hosted": {
                        "repositories": [
                            {"repository": u.repository, "objects": u.objects, "bytes": u.bytes}
                            for u in self.hosted.usage
                        ],
                        "total": {
                            "objects": self.hosted.total.objects,
                            "bytes": self.hosted.total.bytes,
                        },
                    }
                }
            ),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(config: Config, args: argparse.Namespace) -> int:
    report = asyncio.run(collect(config))
    if args.json:
        print(json.dumps(report.as_json(config), indent=2))
        return 0
    rows = [["UPSTREAM", "REPOSITORY", "OBJECTS", "SIZE"]]
    per_upstream = dict(report.upstreams)
    for upstream, _ in report.upstreams:
        for u, repo, usage in report.repositories:
            if u == upstream:
                rows.append([u, repo, str(usage.objects), human(usage.bytes)])
        total = per_upstream[upstream]
        rows.append([upstream, "(all, each object once)", str(total.objects), human(total.bytes)])
    if report.unlinked.objects:
        rows.append(
            ["-", "(in no repository)", str(report.unlinked.objects), human(report.unlinked.bytes)]
        )
    if len(rows) > 1:
        print("\n".join(table(rows)))
    if report.hosted is not None:
        hosted = [["HOSTED REPOSITORY", "OBJECTS", "SIZE"]]
        hosted += [[str(u.repository), str(u.objects), human(u.bytes)] for u in report.hosted.usage]
        everything = report.hosted.total
        hosted.append(
            ["(all hosted, each object once)", str(everything.objects), human(everything.bytes)]
        )
        print("\n".join(table(hosted)))
    print(
        f"total: {report.total.objects} objects, {human(report.total.bytes)} "
        f"({report.total.bytes} bytes)"
    )
    blob_dir = BlobStore(config.root).blob_dir
    print(
        f"on disk: {report.disk.files} files, {human(report.disk.bytes)} "
        f"({report.disk.bytes} bytes) in {blob_dir}, {human(report.disk.allocated)} allocated"
    )
    if report.limit is not None:
        share = 100.0 * report.total.bytes / report.limit if report.limit else 100.0
        print(f"maxsize: {report.limit_setting}, {share:.1f}% used")
    if (report.total.objects, report.total.bytes) != (report.disk.files, report.disk.bytes):
        print(
            "note: the index and the files disagree; `pullthrough verify --repair` "
            "reconciles them (the server also does at start-up)"
        )
    return 0


async def collect(config: Config) -> Report:
    store = BlobStore(config.root)
    disk = await asyncio.to_thread(disk_usage, store.blob_dir)
    limit, setting = await asyncio.to_thread(_limit, config, store)
    empty = Usage(0, 0)
    if not has_index(config):
        return Report([], [], empty, empty, disk, limit, setting)
    hosted = None
    async with open_store(config) as opened:
        index = opened.index
        by_repo = await index.usage_by_repository()
        objects = await stored_objects(index)
        total_objects, total_bytes = await index.usage()
        if config.hosted is not None:
            async with hosted_copy(opened) as hosted_db:
                hosted = await asyncio.to_thread(read_inventory, hosted_db)
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    unlinked = [0, 0]
    for blob in objects.values():
        for upstream in blob.upstreams:
            sums[upstream][0] += 1
            sums[upstream][1] += blob.size
        if not blob.upstreams and (hosted is None or blob.digest not in hosted.digests):
            # Hosted files the index adopted are counted with the hosted repositories.
            unlinked[0] += 1
            unlinked[1] += blob.size
    return Report(
        repositories=[(u, r, Usage(int(n), int(b))) for u, r, n, b in by_repo],
        upstreams=[(u, Usage(n, b)) for u, (n, b) in sorted(sums.items())],
        unlinked=Usage(*unlinked),
        total=Usage(total_objects, total_bytes),
        disk=disk,
        limit=limit,
        limit_setting=setting,
        hosted=hosted,
    )


def _limit(config: Config, store: BlobStore) -> tuple[int | None, str | None]:
    """``mirror.maxsize`` in bytes and as configured (blocking: statvfs for a percentage)."""
    if config.maxsize is None:
        return None, None
    if config.maxsize.bytes is not None:
        return config.maxsize.bytes, human(config.maxsize.bytes)
    # A percentage is of the filesystem the store is on; before the first start the root
    # may not exist yet, so measure the nearest existing parent.
    where = config.root
    while not where.exists() and where != where.parent:
        where = where.parent
    capacity = BlobStore(where).capacity()
    limit = config.maxsize.resolve(capacity)
    return limit, f"{config.maxsize.percent:g}% of {human(capacity)} = {human(limit)}"
