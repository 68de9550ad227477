"""``pullthrough verify`` with ``storage.s3``: the bucket checked against the index.

Every object was hashed before it was uploaded, so the cheap check compares what the index
records with the bucket's listing: each indexed blob must be there, with the size the index
has. ``--rehash`` also streams every object back and hashes it (what bit rot or a
hand-written key would show); ``--repair`` forgets the entries of missing or corrupt objects
and deletes the corrupt ones, so the next request fetches them again. Exit status 1 when
anything was wrong (also with ``--repair``, which fixed it).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from pullthrough.commands.offline import open_store
from pullthrough.config import Config
from pullthrough.errors import BucketUnavailable
from pullthrough.progress import Reporter, human
from pullthrough.reference import parse_digest
from pullthrough.store.bucket import Bucket, BucketObject


async def verify_bucket(config: Config, *, repair: bool, rehash: bool, jobs: int) -> int:
    async with open_store(config) as opened:
        bucket = opened.store.bucket
        assert isinstance(bucket, Bucket)
        try:
            listed = {o.digest: o async for o in bucket.objects()}
        except BucketUnavailable as exc:
            print(f"pullthrough verify: {exc.message}")
            return 2
        indexed = await opened.index.objects(await opened.index.digests())
        missing = sorted(d for d in indexed if d not in listed)
        wrong_size = sorted(
            d for d, blob in indexed.items() if d in listed and listed[d].size != blob.size
        )
        corrupt: list[str] = []
        if rehash:
            candidates = [listed[d] for d in sorted(indexed) if d in listed]
            total = sum(o.size for o in candidates)
            with Reporter() as reporter:
                task = reporter.add("re-hashing the bucket", total)
                gate = asyncio.Semaphore(max(1, jobs))

                async def check(obj: BucketObject) -> None:
                    async with gate:
                        actual = await _hash(bucket, obj, lambda n: reporter.advance(task, n))
                    if actual is not None and actual != obj.digest:
                        reporter.line(
                            f"corrupt {obj.digest} in the bucket: its content is {actual}"
                        )
                        corrupt.append(obj.digest)

                await asyncio.gather(*(check(o) for o in candidates))
        for digest in missing:
            print(f"missing from the bucket: {digest} (indexed, {indexed[digest].size} bytes)")
        for digest in wrong_size:
            print(
                f"wrong size in the bucket: {digest} is {listed[digest].size} bytes, "
                f"indexed as {indexed[digest].size}"
            )
        bad = sorted(set(corrupt) | set(wrong_size))
        if repair:
            for digest in missing + bad:
                await opened.index.forget(digest)  # index first, as eviction does
                if digest in bad:
                    await bucket.delete(parse_digest(digest))
                print(f"removed {digest}; it is fetched again when next asked for")
        unindexed = len(listed.keys() - indexed.keys())
        checked = sum(1 for d in indexed if d in listed)
        how = "re-hashed" if rehash else "listed"
        print(
            f"verified {checked} objects in bucket {config.s3.bucket if config.s3 else '?'} "
            f"({human(sum(listed[d].size for d in indexed if d in listed))}, {how}): "
            f"{len(missing)} missing, {len(wrong_size)} of the wrong size, "
            f"{len(corrupt)} corrupt; {unindexed} objects without an index entry"
        )
        failed = bool(missing or bad)
        if failed and not repair:
            print(
                "run `pullthrough verify --repair` to drop them; they are fetched again on demand"
            )
        return 1 if failed else 0


async def _hash(bucket: Bucket, obj: BucketObject, advance: Callable[[int], None]) -> str | None:
    """The digest of the object's content, streamed; None if it vanished meanwhile."""
    algorithm = obj.digest.partition(":")[0]
    hasher = hashlib.new(algorithm)
    found = False
    async for chunk in bucket.stream(parse_digest(obj.digest)):
        found = True
        await asyncio.to_thread(hasher.update, chunk)
        advance(len(chunk))
    if not found and obj.size:
        return None
    return f"{algorithm}:{hasher.hexdigest()}"
