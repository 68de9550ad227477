"""The process-wide table of fetches in flight: at most one per (upstream, digest).

Keyed by the upstream too: a client of one upstream never joins, and never receives bytes
of, another upstream's unfinished download (``mirror.provenance``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

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
        self.keep: Callable[[], bool] = lambda: True  # False: new fetches keep nothing
        self._warned_at = 0.0
        self._full_until = 0.0

    def get(self, upstream: UpstreamClient, digest: Digest) -> Fetch | None:
        """The upstream's fetch of ``digest`` in flight, if any. A fetch that has failed is
        not joined (its task may not have cleaned up yet): the next request starts afresh."""
        fetch = self._running.get(_key(upstream, digest))
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
            keep=self.keep() and time.monotonic() >= self._full_until,
            on_spill=self._spilled,
        )
        self._running[key] = fetch
        task = asyncio.get_running_loop().create_task(self._run(key, fetch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

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
            await (fetch.run() if self._drive is None else self._drive(fetch))
        finally:
            if self._running.get(key) is fetch:
                del self._running[key]

    def __len__(self) -> int:
        return len(self._running)

    async def wait_all(self, seconds: float) -> None:
        """Give running fetches up to ``seconds`` to finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)


def _key(upstream: UpstreamClient, digest: Digest) -> tuple[str, str]:
    return upstream.name, str(digest)
