"""``auth.htpasswd``: Basic authentication against an htpasswd file of bcrypt entries.

As distribution reads it: one ``user:$2y$...`` line per user, bcrypt only (any other hash
is refused at start-up). The file is re-read when it changes, without a restart. bcrypt
is slow on purpose, so checks run in a thread and a good (user, password) pair is
remembered for a short while instead of being re-hashed on every request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt

log = logging.getLogger(__name__)

# How often the file's mtime is looked at, and how long a verified password is trusted.
RECHECK_INTERVAL = 1.0
GOOD_FOR = 300.0
_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")


class HtpasswdError(ValueError):
    """The file cannot be used; the message says which line and why."""


@dataclass(frozen=True, slots=True)
class _Entries:
    mtime_ns: int
    hashes: dict[str, bytes]


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


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = self._load()
        self._checked_at = time.monotonic()
        self._good: dict[str, float] = {}  # sha256(user, password, hash) → verified at

    def _load(self) -> _Entries:
        st = os.stat(self.path)
        return _Entries(st.st_mtime_ns, parse_htpasswd(self.path.read_text(), str(self.path)))

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RECHECK_INTERVAL:
            return
        self._checked_at = now
        try:
            if os.stat(self.path).st_mtime_ns == self._entries.mtime_ns:
                return
            self._entries = self._load()
            self._good.clear()
            log.info("re-read %s: %d users", self.path, len(self._entries.hashes))
        except (OSError, HtpasswdError) as exc:
            log.error("cannot re-read %s, keeping the users it had: %s", self.path, exc)

    async def check(self, user: str, password: str) -> bool:
        """Whether the password is right for the user, as the file says now."""
        await asyncio.to_thread(self._refresh)
        hashed = self._entries.hashes.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).hexdigest()
        seen = self._good.get(key)
        if seen is not None and time.monotonic() - seen < GOOD_FOR:
            return True
        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if ok:
            self._good[key] = time.monotonic()
        return ok
