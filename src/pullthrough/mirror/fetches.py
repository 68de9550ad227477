"""The process-wide table of fetches in flight: at most one per (upstream, digest).

Keyed by the upstream too: a client of one upstream never joins, and never receives bytes
of, another upstream's unfinished download (``mirror.provenance``).

Each fetch holds one of its upstream's download slots (``mirror.upstream_max_downloads``)
while it runs; a fetch that gets none within a short wait fails with 503 + Retry-After.

A download whose every reader has gone is finished only when it is worth keeping: if,
``ABANDON_GRACE`` seconds after the last reader left, nobody came back and the rest would
not arrive within ``KEEP_IF_DONE_WITHIN`` at the speed of that grace period, it is
cancelled, freeing its slot and connection at once. A fast download still fills the
cache for the next pull (the point of a cache); a slow one nobody waits for would hold a
slot for minutes, and the next pull that wants it starts it again (a new fetch).
In cluster mode other replicas may be reading the download, so it always finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pullthrough.errors import RegistryError, UpstreamUnavailable
from pullthrough.metrics import Metrics
from pullthrough.mirror.fetch import Fetch
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore
from pullthrough.upstream.client import UpstreamClient

log = logging.getLogger(__name__)

# A full disk is reported at most this often, not once per blob.
FULL_WARNING_INTERVAL = 60.0
# After a fetch found the disk full, new fetches keep nothing for this long rather than
# fill the disk again only to throw the bytes away.
FULL_BACKOFF = 5.0
# A reader that reconnects (a client retrying) comes back within about a second.
ABANDON_GRACE = 1.0
# An unread download that would end within this long at its current speed is finished.
KEEP_IF_DONE_WITHIN = 10.0


class Fetches:
    """The process-wide table of fetches in flight: at most one per (upstream, digest)."""

    def __init__(
        self,
        store: BlobStore,
        on_stored: Callable[[Fetch], Awaitable[None]],
        metrics: Metrics,
        drive: Callable[[Fetch], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        # Cluster mode: runs each fetch so that the cluster fetches the digest once
        # (pullthrough.cluster.fetching); None: the fetch downloads by itself.
        self._drive = drive
        self._on_stored = on_stored
        self._metrics = metrics
        self._running: dict[tuple[str, str], Fetch] = {}
        metrics.fetches_in_flight.set_function(lambda: len(self._running))
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_of: dict[Fetch, asyncio.Task[None]] = {}
        self._abandoned: set[Fetch] = set()  # cancelled here, their tasks still ending
        # False for a digest: a new fetch of it keeps nothing (the store is over its limit).
        self.keep: Callable[[Digest], bool] = lambda digest: True
        self._warned_at = 0.0
        self._full_until = 0.0

    def get(self, upstream: UpstreamClient, digest: Digest) -> Fetch | None:
        """The upstream's fetch of ``digest`` in flight, if any. A fetch that has failed is
        not joined (its task may not have cleaned up yet): the next request starts afresh."""
        fetch = self._running.get(_key(upstream, digest))
        return fetch if fetch is not None and fetch.error is None else None

    def named(self, upstream: str, digest: Digest) -> Fetch | None:
        """``get`` by the upstream's name (a peer replica asks by name)."""
        fetch = self._running.get((upstream, str(digest)))
        return fetch if fetch is not None and fetch.error is None else None

    def busy(self, digest: str) -> bool:
        """Whether any upstream's fetch of ``digest`` is running (eviction leaves it be)."""
        return any(d == digest for _, d in self._running)

    def start(self, digest: Digest, upstream: UpstreamClient, repo: str) -> Fetch:
        """The upstream's running fetch of ``digest``, or a new one from ``repo`` on it."""
        key = _key(upstream, digest)
        fetch = self.get(upstream, digest)
        if fetch is not None:
            return fetch
        fetch = Fetch(
            digest=digest,
            upstream=upstream,
            repo=repo,
            store=self._store,
            on_stored=self._on_stored,
            metrics=self._metrics,
            keep=self.keep(digest) and time.monotonic() >= self._full_until,
            on_spill=self._spilled,
        )
        if self._drive is None:
            fetch.on_idle = self._idle
        self._running[key] = fetch
        task = asyncio.get_running_loop().create_task(self._run(key, fetch))
        self._tasks.add(task)
        self._task_of[fetch] = task
        task.add_done_callback(self._tasks.discard)
        return fetch

    def _idle(self, fetch: Fetch) -> None:
        if not fetch.finished:
            asyncio.get_running_loop().call_later(
                ABANDON_GRACE, self._abandon_if_unread, fetch, fetch.written
            )

    def _abandon_if_unread(self, fetch: Fetch, written_before: int) -> None:
        task = self._task_of.get(fetch)
        if task is None or fetch.readers or fetch.finished:
            return
        # The slower of the last second and the whole download so far: an upstream that
        # sends in bursts is not "ending soon" because one burst fell into the last second.
        speed = min((fetch.written - written_before) / ABANDON_GRACE, fetch.rate())
        left = None if fetch.size is None else fetch.size - fetch.written
        if left is not None and speed > 0 and left / speed <= KEEP_IF_DONE_WITHIN:
            log.debug("finishing %s for the cache: nobody reads it, but it ends soon", fetch.digest)
            return
        log.info(
            "cancelling the download of %s from %s at byte %d of %s: every client went away",
            fetch.digest,
            fetch.upstream.name,
            fetch.written,
            fetch.size,
        )
        self._abandoned.add(fetch)
        fetch.fail(UpstreamUnavailable(f"the download of {fetch.digest} was cancelled: unread"))
        key = _key(fetch.upstream, fetch.digest)
        if self._running.get(key) is fetch:
            del self._running[key]  # the next request starts afresh at once
        task.cancel()

    def _spilled(self, fetch: Fetch) -> None:
        # A fetch that keeps nothing cannot take new readers (they would miss the bytes
        # already handed out): the next request for this digest starts its own.
        key = _key(fetch.upstream, fetch.digest)
        if self._running.get(key) is fetch:
            del self._running[key]
        now = time.monotonic()
        if fetch.spilled_at:  # it wrote until the disk was full (not merely over maxsize)
            self._full_until = now + FULL_BACKOFF
        if now - self._warned_at >= FULL_WARNING_INTERVAL:
            self._warned_at = now
            log.warning(
                "store cannot keep %s (disk full or over mirror.maxsize): serving it from "
                "upstream without keeping it; see pullthrough_passthrough_bytes",
                fetch.digest,
            )

    async def _run(self, key: tuple[str, str], fetch: Fetch) -> None:
        try:
            try:
                async with fetch.upstream.download_slot():
                    await (fetch.run() if self._drive is None else self._drive(fetch))
            except RegistryError as exc:  # no slot: the fetch never began
                fetch.fail(exc)
                fetch.settle()
        except asyncio.CancelledError:
            if fetch not in self._abandoned:
                raise
            # Abandoned (above): the partial temp file is of no use to anyone.
            fetch.settle()
            await asyncio.to_thread(fetch.temp_path.unlink, missing_ok=True)
        finally:
            self._abandoned.discard(fetch)
            self._task_of.pop(fetch, None)
            if self._running.get(key) is fetch:
                del self._running[key]

    def __len__(self) -> int:
        return len(self._running)

    def running(self) -> list[Fetch]:
        """The fetches in flight now (a snapshot, for the status page)."""
        return list(self._running.values())

    async def wait_all(self, seconds: float) -> None:
        """Give running fetches up to ``seconds`` to finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)


def _key(upstream: UpstreamClient, digest: Digest) -> tuple[str, str]:
    return upstream.name, str(digest)
