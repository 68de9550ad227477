"""One sweeper at a time over the shared store, and the shared store's temp directory.

The replica holding the ``sweeper`` lease sweeps (eviction by TTL and size, reconcile,
removal of orphaned temp files); it renews the lease at each pass, and when it stops doing
so (it died) another replica takes the lease over at its next pass. The holder publishes
whether the store is over its limit (``store-full``), so every replica stops keeping new
content, not only the one that found out.

In one process the temp directory is emptied at start-up: nothing else can be using it.
Shared, it holds other replicas' downloads in progress, and the partial files of replicas
that died, which the next owner adopts. So it is never emptied at start; a temp file
untouched for longer than a partial file may be adopted is removed by the sweeper instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from typing import Literal

from pullthrough.cluster.claims import PARTIAL_TTL
from pullthrough.cluster.connection import Coordination, RedisUnavailable, key
from pullthrough.store.blobs import BlobStore

log = logging.getLogger(__name__)

# A temp file not written for this long is nobody's: its partial record has expired.
ORPHAN_AGE = PARTIAL_TTL + 60.0

# 1: held and renewed; 2: taken now; 0: another replica holds it.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""


class SweepLease:
    """Implements ``pullthrough.mirror.eviction.SweepTurns`` with a lease in Redis."""

    def __init__(self, coordination: Coordination, store: BlobStore, interval: float) -> None:
        self._c = coordination
        self._store = store
        self._token = f"{coordination.node}#{uuid.uuid4().hex[:12]}"
        # The holder renews at every pass; two missed passes (and some slack) free it.
        self._ttl_ms = int((2 * interval + 30.0) * 1000)
        self._take = coordination.client.register_script(_TAKE)
        self._full = False
        self.held = False

    async def take(self) -> Literal["held", "new", "other"]:
        try:
            answer = await self._c.call(
                lambda r: self._take(keys=[key("sweeper")], args=[self._token, self._ttl_ms])
            )
        except RedisUnavailable:
            self.held = False  # the index is in Redis too: nothing to sweep without it
            return "other"
        self.held = answer in (1, 2)
        if self.held:
            await asyncio.to_thread(remove_orphans, self._store)
        return "held" if answer == 1 else "new" if answer == 2 else "other"

    async def publish(self, full: bool) -> None:
        self._full = full
        with contextlib.suppress(RedisUnavailable):
            await self._c.call(
                lambda r: r.set(key("store-full"), "1" if full else "", px=self._ttl_ms)
            )

    async def shared_full(self) -> bool:
        with contextlib.suppress(RedisUnavailable):
            # Only what ``publish`` writes counts: anything else in Redis is not a verdict.
            self._full = await self._c.call(lambda r: r.get(key("store-full"))) == "1"
        return self._full


def prepare_shared(store: BlobStore) -> None:
    """Create the store's layout, leaving the temp directory's contents alone (blocking)."""
    store.blob_dir.mkdir(parents=True, exist_ok=True)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)


def remove_orphans(store: BlobStore, now: float | None = None) -> int:
    """Remove temp files nobody has written for ORPHAN_AGE (blocking); returns how many.
    A reader that still has one open keeps reading it. Only entries of the store's own
    ``tmp/`` are considered, by their age on disk: no name read from Redis is removed."""
    cutoff = (now or time.time()) - ORPHAN_AGE
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(store.tmp_dir):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    if removed:
        log.info("removed %d abandoned temp files from the shared store", removed)
    return removed
