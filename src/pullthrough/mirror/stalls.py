"""Noticing an upstream that stopped sending, long before its read time-out would.

A download waits on its upstream in two places: for the answer to a resumed (Range)
request, and for each piece of the body. ``StallWatch`` bounds every such wait by the
stall window (``mirror.upstream_stall_timeout``): a wait that hears nothing for that long
is a stall, and the download resumes from the last byte it wrote. A slow upstream is never
a stall as long as some byte arrives within the window.

Stalls share one budget per download (``mirror.upstream_stall_budget``): a wait is bounded
by what is left of it too, so an upstream that stalls again and again costs the clients
that wait for the blob at most the budget in silence before the download gives up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from types import TracebackType

from prometheus_client import Counter

from pullthrough.errors import UpstreamUnavailable


class Stalled(UpstreamUnavailable):
    """The upstream sent nothing for the stall window (or the budget left of it)."""


class StallWatch:
    """The stall window and budget of one download."""

    def __init__(self, *, window: float, budget: float, counter: Counter) -> None:
        self.window = window
        self.budget = budget
        self.left = budget  # seconds of silence still allowed (x - x is exactly 0.0)
        self.stalls = 0
        self._counter = counter  # pullthrough_upstream_stalls for this upstream

    @property
    def exhausted(self) -> bool:
        """No budget is left: the next wait could not last a moment."""
        return self.left <= 0.0

    def waiting(self) -> _Wait:
        """``async with watch.waiting(): await <upstream>``: raises Stalled when the block
        waits longer than the window, or than the budget left if that is less."""
        return _Wait(self, min(self.window, max(0.0, self.left)))

    async def chunks(self, source: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        """``source``'s chunks, each of which must arrive within the window. Only the
        wait for a chunk is watched: the caller's own work between chunks (writing to
        disk, handing bytes to readers) is not the upstream's silence."""
        pieces = aiter(source)
        while True:
            async with self.waiting():
                try:
                    chunk = await anext(pieces)
                except StopAsyncIteration:
                    return
            yield chunk

    def _stalled(self, waited: float) -> Stalled:
        self.left -= waited
        self.stalls += 1
        self._counter.inc()
        return Stalled(
            f"upstream sent nothing for {waited:g} s (stall {self.stalls}; "
            f"{max(0.0, self.left):g} s of the {self.budget:g} s stall budget left)"
        )


class _Wait:
    """One bounded wait (a class, not a generator: it runs once per body chunk)."""

    __slots__ = ("_watch", "_allowance", "_timeout")

    def __init__(self, watch: StallWatch, allowance: float) -> None:
        self._watch = watch
        self._allowance = allowance
        self._timeout = asyncio.timeout(allowance)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError as timed_out:
            # Only our own deadline is a stall; aiohttp's read time-out (also a
            # TimeoutError) stays what it is.
            if not self._timeout.expired():
                raise
            raise self._watch._stalled(self._allowance) from timed_out
