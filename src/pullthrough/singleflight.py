"""Coalesce concurrent calls for the same key into one.

A hundred clients asking for ``alpine:latest`` at once cause one upstream HEAD: the first
caller runs the work, everyone who arrives while it runs awaits the same result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run at most one ``work()`` per key at a time; concurrent callers share its outcome."""

    def __init__(self, on_join: Callable[[], None] | None = None) -> None:
        self._inflight: dict[Hashable, asyncio.Future[T]] = {}
        self._on_join = on_join

    async def do(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._run(key, work))
            self._inflight[key] = future
            # Mark the outcome retrieved even if every caller went away before it came.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        elif self._on_join is not None:
            self._on_join()
        # shield: one impatient caller going away must not cancel the others' result.
        return await asyncio.shield(future)

    async def _run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        finally:
            self._inflight.pop(key, None)

    def __len__(self) -> int:
        return len(self._inflight)


class Trailing:
    """Run ``work`` so that each caller returns once a run that began after its call has
    ended: callers arriving during a run share the next one. A burst of changes costs two
    runs, and none of them returns before a run has seen it."""

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self._work = work
        self._lock = asyncio.Lock()
        self._asked = 0
        self._done = 0

    async def __call__(self) -> None:
        self._asked += 1
        mine = self._asked
        async with self._lock:
            if self._done >= mine:
                return  # a run that began after this call has ended
            covered = self._asked
            await self._work()
            self._done = covered
