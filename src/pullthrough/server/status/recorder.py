"""Feeds the status page's history: every ``mirror.ui.history_interval`` the counters'
increments since the last sample go into ``store.history`` (and once more at shutdown),
from the same collectors ``/metrics`` and the overview read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from pullthrough.config import Config
from pullthrough.mirror.service import Mirror
from pullthrough.server.routes import MIRROR_KEY
from pullthrough.server.status.figures import total
from pullthrough.store.history import History, Sample

log = logging.getLogger(__name__)

HISTORY_KEY = web.AppKey("status_history", History)


def history_path(config: Config) -> Path:
    """The index's own file where one process owns it; in a cluster (whose index is in
    Redis) a file per replica in the shared root, since each counts only its own requests."""
    if config.cluster is None:
        return config.index_path
    replica = hashlib.sha256(config.cluster.advertise.encode()).hexdigest()[:16]
    return config.root / f"status-history-{replica}.db"


class Recorder:
    def __init__(self, mirror: Mirror, history: History) -> None:
        self._mirror = mirror
        self._history = history
        self._last = self._totals()

    def _totals(self) -> dict[str, int]:
        m = self._mirror.metrics
        return {
            "requests": int(total(m.requests)),
            "hits": int(total(m.cache, result="hit") + total(m.cache, result="stale")),
            "misses": int(total(m.cache, result="miss")),
            "served": int(total(m.served_bytes)),
            "fetched": int(total(m.upstream_bytes)),
            "evicted": int(total(m.evicted_bytes)),
        }

    async def sample(self) -> None:
        """Add what the counters gained since the last sample."""
        now = self._totals()
        gained = {k: max(0, v - self._last[k]) for k, v in now.items()}
        self._last = now
        store_bytes = int(total(self._mirror.metrics.store_bytes))
        await self._history.add(Sample(time.time(), store_bytes=store_bytes, **gained))

    async def run_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sample()
            except Exception:  # a lost sample costs one bucket of a chart, nothing more
                log.exception("recording status history failed")


async def recording(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the history once the mirror has started, sample until shutdown."""
    mirror = app[MIRROR_KEY]
    history = History(history_path(mirror.config))
    await history.open()
    app[HISTORY_KEY] = history
    recorder = Recorder(mirror, history)
    task = asyncio.get_running_loop().create_task(
        recorder.run_forever(mirror.config.ui_history_interval)
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await recorder.sample()  # the last partial interval, so a restart loses none
    finally:
        await history.close()
