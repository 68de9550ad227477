"""A fixed number of things at once (connections, downloads), with a bounded wait for one.

Waiting for a slot is never the upstream being down: a caller that gets none within its
wait is told the mirror is busy (503 with Retry-After), and the upstream's circuit
(``upstream.breaker``) is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class NoSlot(Exception):
    """No slot came free within the wait."""


class Slots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._free = asyncio.Semaphore(size)

    @asynccontextmanager
    async def hold(self, wait: float) -> AsyncIterator[None]:
        """Hold one slot for the body; raises NoSlot when none is free within ``wait``."""
        try:
            async with asyncio.timeout(wait):
                await self._free.acquire()
        except TimeoutError:
            raise NoSlot from None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._free.release()
