"""Failed logins, limited per user name and per client address (for ``auth.htpasswd``).

Each key (a user name; a client address, IPv6 by its /64) has an allowance of failures that
refills at a steady rate. An attempt that would need a password hashed first takes one
failure from both its user's and its address's allowance; when either is spent the attempt
is refused before any hashing, with the seconds until one more is allowed. A right password
gives its failure back, so clients that log in correctly never use up an allowance. Names
that are no user have allowances like real ones, so being refused tells nothing about who
exists. Both maps are bounded (least recently used keys go first): clients choose the keys.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Allowance:
    burst: int  # failures allowed in a row
    every: float  # once they are used, one more per this many seconds


PER_USER = Allowance(burst=10, every=6.0)
# Several users may share an address (NAT, a CI network, a proxy in front of the mirror).
PER_ADDRESS = Allowance(burst=20, every=3.0)
MAX_KEYS = 10_000  # per map; ~100 bytes each


class LoginThrottled(Exception):
    """The attempt was refused unchecked; the message says why (safe to show the client)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def address_key(remote: str | None) -> str:
    """The key an address is limited by: IPv4 as is, IPv6 by its /64 (one host commonly
    holds a whole /64, so a key per address would be a key per attempt)."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Bucket:
    left: float  # failures still allowed
    at: float  # when ``left`` was last brought up to date
    told: bool = False  # the log said this key is being refused (once until it refills)


class _Allowances:
    """One allowance per key, at most ``max_keys`` of them."""

    def __init__(self, allowance: Allowance, max_keys: int) -> None:
        self.allowance = allowance
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.allowance.burst), now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            refill = (now - bucket.at) / self.allowance.every
            bucket.left = min(float(self.allowance.burst), bucket.left + refill)
            bucket.at = now
            if bucket.left == self.allowance.burst:
                bucket.told = False
        return bucket

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may fail once more (0: now)."""
        bucket = self._bucket(key, now)
        return max(0.0, (1.0 - bucket.left) * self.allowance.every)

    def take(self, key: str, now: float) -> bool:
        """Use one failure; whether that spent the allowance for the first time since it
        was last full (worth a log line)."""
        bucket = self._bucket(key, now)
        bucket.left -= 1.0
        spent = bucket.left < 1.0 and not bucket.told
        bucket.told = bucket.told or spent
        return spent

    def give_back(self, key: str, now: float) -> None:
        bucket = self._bucket(key, now)
        bucket.left += 1.0
        if bucket.left >= self.allowance.burst:
            del self._buckets[key]  # a full allowance is what a missing key means

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class Attempt:
    user: str
    address: str


class FailedLogins:
    def __init__(
        self,
        *,
        per_user: Allowance = PER_USER,
        per_address: Allowance = PER_ADDRESS,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = _Allowances(per_user, max_keys)
        self.addresses = _Allowances(per_address, max_keys)
        self._clock = clock

    def attempt(self, user: str, remote: str | None) -> Attempt:
        """Count an attempt as failed until ``succeeded`` says otherwise; raises
        LoginThrottled, counting nothing, when the user or the address has no failure left."""
        now = self._clock()
        address = address_key(remote)
        for allowances, key, where in (
            (self.users, user, "for this user"),
            (self.addresses, address, "from this address"),
        ):
            wait = allowances.wait(key, now)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                raise LoginThrottled(
                    f"too many failed logins {where}; try again in {seconds} s", seconds
                )
        if self.users.take(user, now):
            log.warning(
                "failed logins for user %r reached the limit: refusing more for now", user[:100]
            )
        if self.addresses.take(address, now):
            log.warning("failed logins from %s reached the limit: refusing more for now", address)
        return Attempt(user, address)

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the attempt was no failure."""
        now = self._clock()
        self.users.give_back(attempt.user, now)
        self.addresses.give_back(attempt.address, now)
