"""The background scrub: every stored blob is hashed again once per ``mirror.verify_interval``,
at no more than ``mirror.scrub_rate`` bytes per second.

Reads catch a file that was written or replaced (its stat changes, ``store.identity``);
the scrub is for bit rot that leaves the metadata alone. It reads one chunk at a time in a
worker thread and sleeps between chunks to stay under the rate, so it never competes with
serving for more than one thread and a sliver of the disk. A blob that fails is counted
(``pullthrough_corrupt_blobs_total{found="scrub"}``) and quarantined like one a read
caught: removed, and fetched again by the next request. One that passes has its identity
recorded, so reads after a restart can use sendfile without hashing it themselves.

With ``mirror.cluster`` each replica scrubs the shared store: the rate is per replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pullthrough.errors import DigestInvalid
from pullthrough.metrics import Metrics
from pullthrough.reference import Digest, parse_digest
from pullthrough.store.blobs import BlobStore, StoredFile

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# A start hashes what it serves anyway (nothing is known verified yet), so the first pass
# waits a while rather than reading the whole store while the cache warms up.
FIRST_PASS_DELAY = 300.0
# Between passes at least this long, even with verify_interval 0 (a busy loop otherwise).
MIN_PASS_GAP = 1.0


class Pace:
    """Keeps a job at or under ``rate`` units per second by sleeping after each step
    (``clock`` and ``sleep`` are injectable for tests)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next = clock()  # when the next step may start within the budget

    async def spent(self, amount: int) -> None:
        """``amount`` was just done: wait until the budget allows the next step. Idle
        time earns no credit, so the job never bursts above the rate to catch up."""
        now = self._clock()
        self._next = max(self._next, now) + amount / self.rate
        if self._next > now:
            await self._sleep(self._next - now)


@dataclass(frozen=True, slots=True)
class ScrubReport:
    files: int
    hashed_bytes: int
    corrupt: int


class Scrubber:
    def __init__(
        self,
        *,
        store: BlobStore,
        rate: int,
        interval: float,
        quarantine: Callable[[Digest], Awaitable[None]],
        metrics: Metrics,
        pace: Pace | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self._quarantine = quarantine
        self._metrics = metrics
        self._pace = pace or Pace(rate)

    async def run_forever(self) -> None:
        await asyncio.sleep(min(self.interval, FIRST_PASS_DELAY))
        while True:
            began = time.monotonic()
            try:
                report = await self.scrub_once()
                log.info(
                    "scrub: %d blobs (%d bytes) re-hashed, %d corrupt",
                    report.files,
                    report.hashed_bytes,
                    report.corrupt,
                )
            except Exception:  # try again next pass; a failed pass only delays the checks
                log.exception("scrub pass failed")
            await asyncio.sleep(max(MIN_PASS_GAP, self.interval - (time.monotonic() - began)))

    async def scrub_once(self) -> ScrubReport:
        """Hash every blob on disk once, at the configured rate."""
        files = await asyncio.to_thread(self.store.scan)
        hashed = corrupt = 0
        for stored in files:
            try:
                digest = parse_digest(stored.digest)
            except DigestInvalid:
                continue  # scan() lists only digest names; an unsupported one is not ours
            done, ok = await self._check(digest, stored)
            hashed += done
            corrupt += not ok
        return ScrubReport(len(files), hashed, corrupt)

    async def _check(self, digest: Digest, stored: StoredFile) -> tuple[int, bool]:
        """Hash one file; returns (bytes hashed, whether it passed)."""
        blob = await self.store.open(digest)
        if blob is None:
            return 0, True  # removed since the scan
        hasher = hashlib.new(digest.algorithm)
        position = 0
        try:
            while position < blob.size:  # bounded: every step reads bytes or ends the loop
                step = min(CHUNK, blob.size - position)
                data = await asyncio.to_thread(os.pread, blob.fd, step, position)
                if not data:
                    break
                hasher.update(data)
                position += len(data)
                self._metrics.scrubbed_bytes.inc(len(data))
                await self._pace.spent(len(data))
        finally:
            blob.close()
        if position == blob.size and hasher.hexdigest() == digest.hex:
            # The identity as opened: a change during the hash makes the next read hash.
            self.store.verified.record(digest, blob.identity)
            return position, True
        if await asyncio.to_thread(self.store.identity_sync, digest) != (
            blob.identity.dev,
            blob.identity.ino,
        ):
            return position, True  # replaced by a fresh copy meanwhile: that one is new
        log.error("scrub: stored %s does not match its digest: removed", digest)
        self._metrics.corrupt_blobs.labels("scrub").inc()
        await self._quarantine(digest)
        return position, False
