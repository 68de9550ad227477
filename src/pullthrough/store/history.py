"""Coarse history of the mirror's counters, kept on disk so the status page's charts
survive a restart, bounded in size whatever the uptime.

Three resolutions, each a ring of buckets: 1 minute for the last hour, 15 minutes for the
last day, 2 hours for the last week (60 + 96 + 84 rows at most). A sample adds the counter
increments since the previous sample to the current bucket of every resolution, and
records the store's size as the bucket's last value. SQLite on one dedicated thread, as
the index: callers on the event loop never block on the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pullthrough.store.sqlite import open_wal

T = TypeVar("T")

# (name, bucket seconds, buckets kept)
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "hour": (60, 60),
    "day": (900, 96),
    "week": (7200, 84),
}
COUNTERS = ("requests", "hits", "misses", "served", "fetched", "evicted")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS status_history (
    resolution INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTERS)},
    store_bytes INTEGER,
    PRIMARY KEY (resolution, bucket)
);
"""


@dataclass(frozen=True, slots=True)
class Sample:
    """Counter increments since the previous sample, and the store's size now."""

    at: float  # time.time()
    requests: int = 0
    hits: int = 0
    misses: int = 0
    served: int = 0
    fetched: int = 0
    evicted: int = 0
    store_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Point:
    start: int  # the bucket's first second (Unix time)
    requests: int
    hits: int
    misses: int
    served: int
    fetched: int
    evicted: int
    store_bytes: int | None


class History:
    """The history table, in its own connection to a SQLite file (the index's, in WAL
    mode, where one process owns it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        # A lost last minute of history is fine.
        self._conn = open_wal(self.path, _SCHEMA, synchronous="NORMAL")

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def add(self, sample: Sample) -> None:
        """Add ``sample`` to the current bucket of each resolution and drop buckets older
        than each ring holds."""
        increments = [getattr(sample, c) for c in COUNTERS]
        sets = ", ".join(f"{c}={c}+excluded.{c}" for c in COUNTERS)

        def work() -> None:
            assert self._conn is not None, "History.open() was not awaited"
            db = self._conn
            with db:
                db.execute("BEGIN")
                for seconds, kept in RESOLUTIONS.values():
                    bucket = int(sample.at // seconds)
                    db.execute(
                        f"INSERT INTO status_history(resolution, bucket, {', '.join(COUNTERS)}, "
                        f"store_bytes) VALUES (?,?,{','.join('?' * len(COUNTERS))},?) "
                        f"ON CONFLICT(resolution, bucket) DO UPDATE SET {sets}, "
                        "store_bytes=COALESCE(excluded.store_bytes, store_bytes)",
                        (seconds, bucket, *increments, sample.store_bytes),
                    )
                    db.execute(
                        "DELETE FROM status_history WHERE resolution=? AND bucket<=?",
                        (seconds, bucket - kept),
                    )

        await self._run(work)

    async def points(self, name: str, now: float) -> tuple[int, list[Point]]:
        """(bucket seconds, the buckets with data) of resolution ``name`` within its
        window before ``now``, oldest first."""
        seconds, kept = RESOLUTIONS[name]
        first = int(now // seconds) - kept + 1

        def work() -> list[Point]:
            assert self._conn is not None, "History.open() was not awaited"
            rows = self._conn.execute(
                f"SELECT bucket, {', '.join(COUNTERS)}, store_bytes FROM status_history "
                "WHERE resolution=? AND bucket>=? ORDER BY bucket",
                (seconds, first),
            ).fetchall()
            return [Point(row[0] * seconds, *row[1:]) for row in rows]

        return seconds, await self._run(work)

    async def size(self) -> int:
        """Rows held (for tests of the bound)."""

        def work() -> int:
            assert self._conn is not None
            return int(self._conn.execute("SELECT COUNT(*) FROM status_history").fetchone()[0])

        return await self._run(work)
