"""Whether to ask an upstream now: a circuit breaker with a half-open probe.

closed     every request goes to the upstream. A request that finds it unreachable
           (refused, no route, no name, socket connect time-out) is one failure;
           ``FAILURES`` of them within ``WINDOW`` seconds open the circuit. Any answer
           from the upstream forgets the failures: one refused connection (a restart, a
           flaky route) never turns every other request away.
open       the upstream is believed down: uncached requests fail at once (cached content
           is served by the mirror without asking). The first request that arrives is let
           through at once as the probe, and the circuit is half-open while it runs.
half-open  one probe is under way; every other request fails at once. The probe's answer
           closes the circuit for everyone; its failure opens it again, so the next
           request probes. A probe that ends with neither (cancelled, refused by policy)
           gives its turn back: open again, the next request probes.

There is no fixed rest: the mirror notices the upstream is back on the first request
after it is, and at most one request at a time pays for finding out that it is not.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# 3 failures in 10 s: a single refused connection (or two, from a restart racing a pull)
# is not an outage; three separate requests failing within seconds is.
FAILURES = 3
WINDOW = 10.0


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(eq=False, slots=True)
class Ticket:
    """Leave to send one request; ``probe`` when it is the half-open probe."""

    probe: bool


class Breaker:
    """The circuit of one upstream. Not thread-safe: one event loop uses it."""

    def __init__(
        self,
        *,
        failures: int = FAILURES,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self._threshold = failures
        self._window = window
        self._clock = clock
        self._on_change = on_change
        self._failed_at: deque[float] = deque()
        self._state = State.CLOSED
        self._probe: Ticket | None = None

    @property
    def state(self) -> State:
        return self._state

    def admit(self) -> Ticket | None:
        """A ticket to send a request now, or None: the upstream is believed down and a
        probe is already under way (the caller fails at once)."""
        if self._state is State.CLOSED:
            return Ticket(probe=False)
        if self._state is State.HALF_OPEN:
            return None
        self._probe = Ticket(probe=True)
        self._set(State.HALF_OPEN)
        return self._probe

    def succeeded(self) -> None:
        """The upstream answered (any status): it is reachable, for everyone."""
        self._failed_at.clear()
        self._probe = None
        self._set(State.CLOSED)

    def failed(self, ticket: Ticket) -> None:
        """The request holding ``ticket`` could not reach the upstream."""
        if ticket is self._probe:
            self._probe = None
            self._set(State.OPEN)
            return
        if self._state is not State.CLOSED:
            return  # admitted before the circuit opened: already counted as down
        now = self._clock()
        self._failed_at.append(now)
        while self._failed_at and now - self._failed_at[0] > self._window:
            self._failed_at.popleft()
        if len(self._failed_at) >= self._threshold:
            self._failed_at.clear()
            self._set(State.OPEN)

    def release(self, ticket: Ticket) -> None:
        """The request holding ``ticket`` is over. A probe that ended without a verdict
        (cancelled, or failed for another reason) hands the probe to the next request."""
        if ticket is self._probe:
            self._probe = None
            self._set(State.OPEN)

    def _set(self, state: State) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
