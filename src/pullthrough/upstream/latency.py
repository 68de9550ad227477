"""How long an upstream takes to answer: the time from sending a request to its response
headers, over its last few requests, kept in memory (a restart starts afresh)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# Enough answers for a stable p90, few enough that a change of upstream speed shows soon.
WINDOW = 200


@dataclass(frozen=True)
class LatencySummary:
    """Seconds, over the ``samples`` most recent answers."""

    samples: int
    median: float
    p90: float


class Latency:
    """A bounded ring of answer times; the oldest drops out when it is full."""

    def __init__(self, size: int = WINDOW) -> None:
        self._times: deque[float] = deque(maxlen=size)

    def note(self, seconds: float) -> None:
        self._times.append(seconds)

    def summary(self) -> LatencySummary | None:
        """None until the upstream has answered once."""
        if not self._times:
            return None
        ordered = sorted(self._times)
        return LatencySummary(
            samples=len(ordered), median=_rank(ordered, 0.5), p90=_rank(ordered, 0.9)
        )


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile: always a time that was measured, never an interpolation."""
    return ordered[max(0, math.ceil(len(ordered) * q) - 1)]
