"""Noticing an upstream that stopped sending, long before its read time-out would.

A download waits on its upstream in two places: for the answer to a resumed (Range)
request (``waiting``), and for each read of the body, which a download thread bounds with a
socket time-out of ``allowance()`` seconds (``stalled`` counts one that expired).
``StallWatch`` bounds every such wait by the stall window (``mirror.upstream_stall_timeout``):
a wait that hears nothing for that long is a stall, and the download resumes from the last
byte it wrote. A slow upstream is never a stall as long as some byte arrives within the
window.

Stalls share one budget per download (``mirror.upstream_stall_budget``): a wait is bounded
by what is left of it too, so an upstream that stalls again and again costs the clients
that wait for the blob at most the budget in silence before the download gives up.
"""

from __future__ import annotations

import asyncio
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

    def allowance(self) -> float:
        """How long the next wait may last: the window, or the budget left if less."""
        return min(self.window, max(0.0, self.left))

    def stalled(self, waited: float) -> Stalled:
        """Count a wait of ``waited`` seconds that heard nothing (a download thread's
        read timed out): the error to raise."""
        return self._stalled(waited)

    def waiting(self) -> _Wait:
        """``async with watch.waiting(): await <upstream>``: raises Stalled when the block
        waits longer than the window, or than the budget left if that is less."""
        return _Wait(self, self.allowance())

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
