"""``pullthrough verify [CONFIG] [--repair]``: re-hash every stored object.

The server trusts a file under ``blobs/`` for what its name says (it was verified before
the rename that put it there) and does not re-hash on read, so bit rot, a bad disk or a
hand-edited file would be served as is. This finds such files: each one's content is
hashed with its digest's algorithm and compared with its name. Exit status 1 when any
object is corrupt (also with ``--repair``, which fixed it: something was wrong) or the
index database fails SQLite's integrity check.

``--repair`` removes corrupt objects the way eviction does, index entry first and then
the file, so the server stops trusting the entry before the file goes and fetches the
object afresh at its next request; then it reconciles the index with the files (indexes
files that have no entry, drops entries whose file is gone). It is safe while the server
runs: a request that already opened a corrupt file still gets its bytes, every later one
refetches.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pullthrough.commands.offline import has_index, open_store
from pullthrough.config import Config
from pullthrough.mirror.eviction import Sweeper
from pullthrough.progress import Reporter, Ticker, human
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore, StoredFile
from pullthrough.store.index import IndexBackend

if TYPE_CHECKING:
    from rich.progress import TaskID

# Big sequential reads into one reused buffer: hashing, not syscalls, sets the pace.
READ_SIZE = 4 * 1024 * 1024
PROGRESS_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Checked:
    file: StoredFile
    actual: str | None  # the digest of the content; None when the file vanished meanwhile
    inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file that was hashed

    @property
    def corrupt(self) -> bool:
        return self.actual is not None and self.actual != self.file.digest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repair",
        action="store_true",
        help="remove corrupt objects (they are fetched again when next asked for) and "
        "reconcile the index with the files",
    )
    parser.add_argument(
        "--rehash",
        action="store_true",
        help="storage.s3: also read every object back from the bucket and hash it (the "
        "default compares the bucket's listing with the index: presence and size)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="files hashed in parallel (default: %(default)s)",
    )


def run(config: Config, args: argparse.Namespace) -> int:
    if config.s3 is not None:
        # The files under the storage root are only a cache: the bucket is what is kept.
        from pullthrough.commands.verify_bucket import verify_bucket  # loads obstore

        return asyncio.run(
            verify_bucket(config, repair=args.repair, rehash=args.rehash, jobs=max(1, args.jobs))
        )
    return asyncio.run(verify(config, repair=args.repair, jobs=max(1, args.jobs)))


async def verify(config: Config, *, repair: bool, jobs: int) -> int:
    store = BlobStore(config.root)
    files = await asyncio.to_thread(store.scan)
    total = sum(f.size for f in files)
    with Reporter() as reporter:
        task = reporter.add("verifying", total)
        checked = await asyncio.to_thread(_hash_all, files, jobs, reporter, task)
    corrupt = [c for c in checked if c.corrupt]
    vanished = sum(1 for c in checked if c.actual is None)
    failed = bool(corrupt)

    # Opening the index of a store that has none would create one: only --repair does
    # (reconciling then indexes every file, as the server's start-up would).
    if has_index(config) or repair:
        async with open_store(config) as opened:
            integrity = await opened.index.integrity_check()
            if integrity != "ok":
                failed = True
                print(f"index {opened.where} fails its integrity check: {integrity}")
            if repair:
                for c in corrupt:
                    print(await _remove(opened.index, store, c))
                adopted, forgotten = await _sweeper(config, opened.index, store).reconcile()
                print(f"reconciled: {adopted} files indexed, {forgotten} stale entries dropped")
            else:
                await _compare(opened.index, store, {c.file.digest for c in checked if c.actual})

    gone = f", {vanished} removed while being checked" if vanished else ""
    print(
        f"verified {len(checked) - vanished} objects ({human(total)}): {len(corrupt)} corrupt{gone}"
    )
    if corrupt and not repair:
        print("run `pullthrough verify --repair` to remove them; they are fetched again on demand")
    return 1 if failed else 0


def _hash_all(
    files: list[StoredFile], jobs: int, reporter: Reporter, task: TaskID | None
) -> list[Checked]:
    """Hash every file in a thread pool (hashlib releases the GIL on large buffers, so
    several files hash in parallel); progress as bytes are read."""
    lock = threading.Lock()
    done_bytes = 0
    done_files = 0
    total = sum(f.size for f in files)
    ticker = Ticker(PROGRESS_INTERVAL)

    def on_bytes(count: int) -> None:
        nonlocal done_bytes
        reporter.advance(task, count)
        with lock:
            done_bytes += count
        if not reporter.tty and ticker.due():
            reporter.line(
                f"verifying: {done_files}/{len(files)} objects, "
                f"{human(done_bytes)} of {human(total)}"
            )

    results: list[Checked] = []
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="verify") as pool:
        futures = [pool.submit(_hash_file, f, on_bytes) for f in files]
        for future in as_completed(futures):
            result = future.result()
            with lock:
                done_files += 1
            if result.corrupt:  # said at once: a long run should not hide it until the end
                reporter.line(
                    f"corrupt {result.file.digest} ({result.file.size} bytes, "
                    f"{result.file.path}): its content is {result.actual}"
                )
            results.append(result)
    return results


def _hash_file(file: StoredFile, on_bytes: Callable[[int], None]) -> Checked:
    algorithm = file.digest.partition(":")[0]
    hasher = hashlib.new(algorithm)
    try:
        fd = os.open(file.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Checked(file, None)  # evicted by the running server since the scan
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        while count := f.readinto(buffer):
            hasher.update(view[:count])
            on_bytes(count)
    return Checked(file, f"{algorithm}:{hasher.hexdigest()}", (st.st_dev, st.st_ino))


async def _remove(index: IndexBackend, store: BlobStore, checked: Checked) -> str:
    digest = checked.file.digest

    def same_file() -> bool | None:
        try:
            st = os.stat(checked.file.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino) == checked.inode

    same = await asyncio.to_thread(same_file)
    if same is False:
        # Evicted and fetched again since we hashed it: the new file was verified on
        # arrival; removing it would throw away good bytes.
        return f"kept {digest}: it was replaced by a fresh copy while being checked"
    # Index first (as eviction does): from here on the server no longer trusts the entry,
    # and a request that finds no file fetches the object again.
    await index.forget(digest)
    if same is not None:
        await store.remove(parse_digest(digest))
    return f"removed {digest} (corrupt); it is fetched again when next asked for"


def _sweeper(config: Config, index: IndexBackend, store: BlobStore) -> Sweeper:
    return Sweeper(
        store=store,
        index=index,
        ttls={u.name: u.ttl for u in config.upstreams},
        default_ttl=config.upstream.ttl,
        limit=config.maxsize,
        batch=config.gc_batch,
    )


async def _compare(index: IndexBackend, store: BlobStore, on_disk: set[str]) -> None:
    """Say (without changing anything) where the index and the files disagree: files
    without an entry, entries without a file, and tags naming a manifest the index does
    not hold (what ``ls`` would list as an image that is not there)."""
    # Tags before entries (a running server writes the entry before the tag).
    tagged = {row[3] for row in await index.catalog_rows()}
    known = await index.digests()
    unindexed = len(on_disk - known)
    # An entry without a file may be an object the running server stored after our scan.
    missing = 0
    for digest in known - on_disk:
        if not await store.exists(parse_digest(digest)):
            missing += 1
    ghosts = 0
    for digest in tagged - known:
        if await index.blob(digest) is None:
            ghosts += 1
    print(
        f"index: {unindexed + missing + ghosts} inconsistencies ({unindexed} files without "
        f"an index entry, {missing} index entries without a file, {ghosts} tags naming a "
        "manifest that is not stored)"
    )
    if unindexed or missing or ghosts:
        print(
            "note: `pullthrough verify --repair` (or the server's next start) reconciles "
            "the index with the files"
        )
