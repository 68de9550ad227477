"""What the upstream says about its rate limit, and the back-off after a 429.

Docker Hub sends ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600``
on pulls and answers 429 with ``Retry-After`` when the quota is spent. After a 429 the
mirror stops asking that upstream until Retry-After has passed (cached content keeps being
served meanwhile): hammering a rate-limited registry only extends the block.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# Without a Retry-After header, wait this long before asking again.
DEFAULT_BACKOFF = 10.0
# A Retry-After beyond this is taken as this: the mirror re-checks at least hourly.
MAX_BACKOFF = 3600.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _quota(value: str | None) -> int | None:
    if value is None:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isascii() and head.isdigit() else None


class RateLimit:
    """One upstream's rate-limit state."""

    def __init__(self, upstream: str, on_remaining: Callable[[int], None] | None = None) -> None:
        self.upstream = upstream
        self._on_remaining = on_remaining
        self.limit: int | None = None
        self.remaining: int | None = None
        # The least ``remaining`` seen since it was last set to None: answers arrive out of
        # order (a HEAD sent before a GET may be answered after it, with the older count),
        # while within its window a quota only goes down.
        self.lowest: int | None = None
        self.blocked_until = 0.0  # time.monotonic() before which the upstream is not asked
        self.throttled = 0  # 429s received

    def note(self, headers: Mapping[str, str]) -> None:
        """Record ``ratelimit-*`` headers of any upstream response."""
        limit = _quota(headers.get("ratelimit-limit"))
        remaining = _quota(headers.get("ratelimit-remaining"))
        if remaining is None:
            return
        if remaining != self.remaining:
            level = logging.WARNING if limit and remaining <= limit // 10 else logging.INFO
            log.log(
                level,
                "upstream %s rate limit: %d of %s pulls remaining",
                self.upstream,
                remaining,
                limit if limit is not None else "?",
            )
        self.limit, self.remaining = limit, remaining
        self.lowest = remaining if self.lowest is None else min(self.lowest, remaining)
        if self._on_remaining is not None:
            self._on_remaining(remaining)

    def throttle(self, headers: Mapping[str, str]) -> float:
        """Record a 429; returns the seconds the upstream will now be left alone."""
        self.note(headers)
        self.throttled += 1
        wait = parse_retry_after(headers.get("Retry-After"))
        wait = DEFAULT_BACKOFF if wait is None else min(wait, MAX_BACKOFF)
        self.blocked_until = max(self.blocked_until, time.monotonic() + wait)
        log.warning(
            "upstream %s answered 429 (rate limited; %s pulls remaining); not asking it "
            "again for %.0f s",
            self.upstream,
            self.remaining if self.remaining is not None else "unknown",
            wait,
        )
        return wait

    def wait_left(self) -> float:
        """Seconds until the upstream may be asked again (0 when it may be now)."""
        return max(0.0, self.blocked_until - time.monotonic())
