"""``pullthrough gc``'s part for hosted repositories: content nothing references goes.

Hosted content is never evicted; it is removed here only, once no manifest or tag of a
hosted repository references it (``store.hosted_sweep``). A file goes only when, checked
with the file in hand, no hosted repository holds its digest, no upstream served it (then
it is the cache's, and eviction decides), and it was not placed within the grace period:
a push under way beside gc keeps what it uploads.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pullthrough.config import Config
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.hosted_index import connect
from pullthrough.store.hosted_sweep import Garbage, collect, held, settled
from pullthrough.store.index import IndexBackend

if TYPE_CHECKING:  # storage.s3 only (it loads obstore)
    from pullthrough.store.bucket import Bucket, BucketObject

# What became of one unreferenced blob: its size when removed (or removable, dry), or why not.
Outcome = int | Literal["fresh", "held", "absent", "replaced"]


@dataclass(slots=True)
class HostedGc:
    """What one run did (or, dry, would do)."""

    blobs: list[tuple[str, str, int]] = field(default_factory=list)  # rows dropped
    removed: list[tuple[str, int]] = field(default_factory=list)  # files: digest, size
    kept_fresh: list[str] = field(default_factory=list)  # files within the grace period
    left_to_cache: list[str] = field(default_factory=list)  # an upstream served them too

    def lines(self, *, dry_run: bool) -> list[str]:
        verb = "would remove" if dry_run else "removed"
        out = [f"hosted: {verb} {repo}@{digest} (unreferenced)" for repo, digest, _ in self.blobs]
        out += [f"hosted: {verb} {digest} ({size} bytes)" for digest, size in self.removed]
        out += [f"hosted: kept {d} (placed within mirror.hosted.gc_grace)" for d in self.kept_fresh]
        freed = sum(size for _, size in self.removed)
        out.append(
            f"hosted: {verb} {len(self.blobs)} unreferenced blob links and "
            f"{len(self.removed)} objects, {freed} bytes"
        )
        return out


async def collect_hosted(
    config: Config,
    store: BlobStore,
    index: IndexBackend,
    *,
    dry_run: bool,
    path: Path | None = None,
) -> HostedGc:
    """Mark and sweep the hosted repositories of ``config`` (their index at ``path``,
    ``hosted.db`` under the root unless given); remove the files nothing holds any more
    (none with ``dry_run``)."""
    assert config.hosted is not None
    grace = config.hosted.gc_grace
    path = path or config.root / "hosted.db"
    report = HostedGc()
    if not path.is_file():
        return report
    now = time.time()
    garbage = await asyncio.to_thread(_collect, path, now - grace, dry_run)
    report.blobs = list(garbage.blobs)
    # Files an upstream served as well belong to the cache: eviction decides about them.
    served = set().union(*(await index.repository_links()).values())
    listed: dict[str, BucketObject] | None = None
    for digest in garbage.files:
        if digest in served:
            report.left_to_cache.append(digest)
            if not dry_run:
                await asyncio.to_thread(_settle, path, digest)
            continue
        outcome = await asyncio.to_thread(
            _remove, path, store, digest, now - grace, dry_run, store.bucket is not None
        )
        if store.bucket is not None and (
            outcome == "absent" or (isinstance(outcome, int) and not dry_run)
        ):
            # storage.s3: the bucket's copy is the blob; the local file was a cache of it.
            if listed is None:
                listed = {o.digest: o async for o in store.bucket.objects()}
            outcome = await _remove_from_bucket(
                path, store.bucket, digest, listed.get(digest), now - grace, dry_run, outcome
            )
        if outcome == "fresh":
            report.kept_fresh.append(digest)
        elif isinstance(outcome, int):
            report.removed.append((digest, outcome))
            if not dry_run:
                await index.forget(digest)
    return report


def _collect(path: Path, pushed_before: float, dry_run: bool) -> Garbage:
    db = connect(path)
    try:
        return collect(db, pushed_before=pushed_before, dry_run=dry_run)
    finally:
        db.close()


def _settle(path: Path, digest: str) -> None:
    db = connect(path)
    try:
        settled(db, digest)
    finally:
        db.close()


async def _remove_from_bucket(
    path: Path,
    bucket: Bucket,
    digest: str,
    listed: BucketObject | None,
    placed_before: float,
    dry_run: bool,
    local: int | Literal["absent"],
) -> Outcome:
    """The bucket's part of ``_remove``, once the local file went (``local``, its size; not
    with ``dry_run``) or when there was none ("absent"): the object goes too, unless, with
    no local file to judge by, the object was placed within the grace period or a hosted
    repository holds the digest again."""
    if local == "absent":
        if listed is None:  # nothing here or there: only the rows are left
            if not dry_run:
                await asyncio.to_thread(_settle, path, digest)
            return "absent"
        if listed.modified >= placed_before:
            return "fresh"
        if dry_run:
            return listed.size
        if await asyncio.to_thread(_held, path, digest):
            return "held"
    await bucket.delete(parse_digest(digest))
    await asyncio.to_thread(_settle, path, digest)
    return listed.size if listed is not None else local


def _held(path: Path, digest: str) -> bool:
    db = connect(path)
    try:
        return held(db, digest)
    finally:
        db.close()


def _remove(
    path: Path,
    store: BlobStore,
    digest: str,
    placed_before: float,
    dry_run: bool,
    in_bucket: bool = False,
) -> Outcome:
    """Remove ``digest``'s file unless a hosted repository holds it again ("held") or it
    was placed within the grace period ("fresh"): its size when removed (or removable,
    dry); "absent" when there is no file (with ``in_bucket`` the bucket's copy is left to
    the caller, and the rows with it); "replaced" when a push put a new copy in place
    meanwhile."""
    parsed = parse_digest(digest)
    file = store.path_for(parsed)
    db = connect(path)
    try:
        try:
            st = file.stat()
        except FileNotFoundError:
            if not dry_run and not in_bucket:
                settled(db, digest)
            return "absent"
        # ctime: a rename into place sets it, so a blob a push has just committed (even
        # one written long ago in a paused upload) counts as fresh.
        if max(st.st_mtime, st.st_ctime) >= placed_before:
            return "fresh"
        if dry_run:
            # Its rows are still there (nothing was swept): ``collect`` saw through them.
            return st.st_size
        if held(db, digest):
            return "held"
        # Removed only if still the file looked at: a push that renamed a fresh copy
        # into place since then keeps it.
        removed = store.remove_if_same_sync(parsed, (st.st_dev, st.st_ino))
        settled(db, digest)
        return st.st_size if removed else "replaced"
    finally:
        db.close()
