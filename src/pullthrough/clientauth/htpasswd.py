"""``auth.htpasswd``: Basic authentication against an htpasswd file of bcrypt entries.

As distribution reads it: one ``user:$2y$...`` line per user, bcrypt only (any other hash
is refused at start-up). The file is re-read when it changes, without a restart.

bcrypt is slow on purpose, and anyone can ask for it, so:

- checks run on a small pool of threads of their own, never the default executor whose
  threads do the store's file I/O, and only so many may wait for it;
- a good (user, password) pair is remembered for a while instead of being re-hashed on
  every request, and identical checks in flight are hashed once;
- failed logins are limited per user and per address (``throttle``), refused before hashing;
- a name that is no user is hashed against a stand-in of the file's usual cost, and a
  password over bcrypt's 72 bytes is refused unhashed whoever the user, so neither the time
  nor the answer tells which users exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import math
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from pullthrough.clientauth.throttle import Attempt, FailedLogins, LoginThrottled

log = logging.getLogger(__name__)

# How often the file's mtime is looked at, and how long a verified password is trusted.
RECHECK_INTERVAL = 1.0
GOOD_FOR = 300.0
MAX_GOOD = 1024  # verified pairs remembered at once
MAX_PASSWORD = 72  # bytes: bcrypt reads no more (and 4.1+ raises for more)
# One thread leaves a core for the event loop on a small machine.
BCRYPT_THREADS = 1 if (os.cpu_count() or 1) <= 2 else 2
MAX_WAITING = 32  # bcrypt checks queued or running; more are refused (429), not queued
_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
_BCRYPT = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


class HtpasswdError(ValueError):
    """The file cannot be used; the message says which line and why."""


@dataclass(frozen=True, slots=True)
class _Entries:
    mtime_ns: int
    hashes: dict[str, bytes]
    stand_in: bytes  # hashed against for names that are no user: as costly as a real entry


def parse_htpasswd(text: str, where: str) -> dict[str, bytes]:
    """user → bcrypt hash; raises HtpasswdError for any entry that is not bcrypt."""
    entries: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{where} line {number}: expected user:hash")
        encoded = hashed.strip().encode()
        if not encoded.startswith(_BCRYPT_PREFIXES):
            raise HtpasswdError(
                f"{where} line {number}: the entry for {user!r} is not bcrypt "
                "(create it with htpasswd -B); only bcrypt entries are accepted"
            )
        if not _BCRYPT.fullmatch(encoded):
            raise HtpasswdError(
                f"{where} line {number}: the entry for {user!r} is not a whole bcrypt hash"
            )
        entries[user] = encoded
    return entries


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, or None."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def stand_in_hash(hashes: dict[str, bytes]) -> bytes:
    """A bcrypt hash no password matches, at the cost most entries have: checking against it
    takes as long as checking a real user's password."""
    costs = Counter(int(h[4:6]) for h in hashes.values())
    cost = costs.most_common(1)[0][0] if costs else 10
    # A random salt and an all-zero digest: bcrypt hashes the candidate in full, then compares.
    return bcrypt.gensalt(rounds=cost) + b"." * 31


def _pair_key(user: str, password: bytes, hashed: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (user.encode(), password, hashed):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


class BcryptPool:
    """bcrypt on threads of its own: however many checks are asked for, the default executor
    (file I/O) stays free, and at most ``max_waiting`` checks are queued or running."""

    def __init__(self, *, threads: int = BCRYPT_THREADS, max_waiting: int = MAX_WAITING) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="pullthrough-bcrypt"
        )
        self.max_waiting = max_waiting
        self.waiting = 0

    @property
    def full(self) -> bool:
        return self.waiting >= self.max_waiting

    def checkpw(self, password: bytes, hashed: bytes) -> asyncio.Future[bool]:
        """Queue a check; it counts as waiting from now until it is done."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, bcrypt.checkpw, password, hashed)
        self.waiting += 1
        done.add_done_callback(self._one_less)
        return done

    def _one_less(self, _: asyncio.Future[bool]) -> None:
        self.waiting -= 1


class Htpasswd:
    def __init__(
        self,
        path: Path,
        *,
        logins: FailedLogins | None = None,
        pool: BcryptPool | None = None,
    ) -> None:
        self.path = path
        self.logins = logins or FailedLogins()
        self.pool = pool or BcryptPool()
        self._entries = self._load()
        self._checked_at = time.monotonic()
        self._good: dict[bytes, float] = {}  # _pair_key(user, password, hash) → verified at
        self._checking: dict[bytes, asyncio.Future[bool]] = {}  # by _pair_key: hashed once
        self._full_told_at = -math.inf

    def _load(self) -> _Entries:
        st = os.stat(self.path)
        hashes = parse_htpasswd(self.path.read_text(), str(self.path))
        return _Entries(st.st_mtime_ns, hashes, stand_in_hash(hashes))

    def _changed(self) -> _Entries | None:
        """The file as it is now if it changed (None otherwise, or if it cannot be read)."""
        try:
            if os.stat(self.path).st_mtime_ns == self._entries.mtime_ns:
                return None
            return self._load()
        except (OSError, HtpasswdError) as exc:
            log.error("cannot re-read %s, keeping the users it had: %s", self.path, exc)
            return None

    async def _current(self) -> _Entries:
        now = time.monotonic()
        # Looked at on the loop: only one request a second hops to a thread for the stat.
        if now - self._checked_at >= RECHECK_INTERVAL:
            self._checked_at = now
            changed = await asyncio.to_thread(self._changed)
            if changed is not None:
                self._entries = changed
                self._good.clear()
                log.info("re-read %s: %d users", self.path, len(changed.hashes))
        return self._entries

    async def check(self, user: str, password: str, remote: str | None = None) -> bool:
        """Whether the password is right for the user, as the file says now. Raises
        LoginThrottled, without hashing, when the user or the client address ``remote`` has
        failed too often lately, or too many checks are already waiting for bcrypt."""
        entries = await self._current()
        hashed = entries.hashes.get(user)
        secret = password.encode()
        key = _pair_key(user, secret, hashed or entries.stand_in)
        if hashed is not None and self._remembered(key):
            return True
        checking = self._checking.get(key)
        if checking is None:
            # Decided here, before any task or thread: a refused attempt costs next to nothing.
            too_long = len(secret) > MAX_PASSWORD
            if not too_long and self.pool.full:
                self._tell_pool_full()
                raise LoginThrottled("too many logins are being checked; try again in 1 s", 1)
            attempt = self.logins.attempt(user, remote)
            if too_long:
                self._failed(attempt, "password longer than 72 bytes")
                return False
            hashing = self.pool.checkpw(secret, hashed or entries.stand_in)
            checking = asyncio.ensure_future(self._conclude(hashing, attempt, hashed, key))
            self._checking[key] = checking
            checking.add_done_callback(lambda f: self._done_checking(key, f))
        # shield: a client going away must not cancel a check others may be waiting for.
        return await asyncio.shield(checking)

    async def _conclude(
        self, hashing: asyncio.Future[bool], attempt: Attempt, hashed: bytes | None, key: bytes
    ) -> bool:
        if await hashing and hashed is not None:
            self.logins.succeeded(attempt)
            self._remember(key)
            return True
        self._failed(attempt, "wrong password" if hashed is not None else "no such user")
        return False

    def _done_checking(self, key: bytes, checking: asyncio.Future[bool]) -> None:
        self._checking.pop(key, None)
        if not checking.cancelled():
            checking.exception()  # retrieved, even if every caller went away

    def _failed(self, attempt: Attempt, reason: str) -> None:
        log.info(
            "login failed for user %r from %s: %s", attempt.user[:100], attempt.address, reason
        )

    def _tell_pool_full(self) -> None:
        if time.monotonic() - self._full_told_at > 60:
            self._full_told_at = time.monotonic()
            log.warning(
                "%d password checks are waiting for bcrypt: refusing more logins (429) "
                "until some are done",
                self.pool.waiting,
            )

    def _remembered(self, key: bytes) -> bool:
        seen = self._good.get(key)
        return seen is not None and time.monotonic() - seen < GOOD_FOR

    def _remember(self, key: bytes) -> None:
        now = time.monotonic()
        if len(self._good) >= MAX_GOOD:
            self._good = {k: t for k, t in self._good.items() if now - t < GOOD_FOR}
            while len(self._good) >= MAX_GOOD:  # the oldest go first
                del self._good[next(iter(self._good))]
        self._good[key] = now
