"""Upstream authentication: Basic and Bearer-token challenges, tokens cached per scope.

Credentials go only to the upstream itself or to a token realm that the upstream's own
challenge names on its host or registrable domain; a foreign realm gets no credentials (it
may still issue an anonymous token, which carries no secret of ours). A redirect target's
challenge is never answered (``upstream.client``): a CDN is not the upstream, whatever
host its realm is on.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')

# Tokens without expires_in live 60 s (the token spec's default); renew a little early.
DEFAULT_TOKEN_LIFETIME = 60.0
EXPIRY_MARGIN = 5.0
# Tokens kept per upstream: enough for every repository a busy mirror pulls within a
# token's lifetime, small enough that made-up repository names cost little (~1024 * 3 KiB).
MAX_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lower-case
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None if unparseable."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace(
            '\\"', '"'
        )
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _registrable(host: str) -> str:
    """An approximation of the registrable domain: the last two labels (three under a
    two-letter country code with a short second label, like ``co.uk``). IP addresses and
    single-label hosts stand for themselves."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if len(labels) <= 2:
        return host
    if len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def same_registrable_domain(url_a: str, url_b: str) -> bool:
    """Whether two URLs' hosts share a registrable domain (where credentials may go)."""
    host_a = urlsplit(url_a).hostname or ""
    host_b = urlsplit(url_b).hostname or ""
    return bool(host_a) and _registrable(host_a) == _registrable(host_b)


@dataclass(slots=True)
class Token:
    value: str
    expires_at: float

    def valid(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) < self.expires_at - EXPIRY_MARGIN


class TokenCache:
    """Bearer tokens by scope, kept until they expire; at most ``max_tokens`` of them, the
    least recently used going first. Scopes name repositories, which clients choose: every
    new name would otherwise keep a token (a few KiB with an x5c header) for its lifetime.
    A token evicted early only costs a token request when its repository is asked again."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self.max_tokens = max_tokens
        self._tokens: OrderedDict[str, Token] = OrderedDict()

    def get(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is None:
            return None
        if not token.valid():
            del self._tokens[scope]
            return None
        self._tokens.move_to_end(scope)
        return token.value

    def put(self, scope: str, value: str, expires_in: float) -> None:
        self._tokens[scope] = Token(value, time.monotonic() + max(expires_in, EXPIRY_MARGIN + 1))
        self._tokens.move_to_end(scope)
        while len(self._tokens) > self.max_tokens:
            self._tokens.popitem(last=False)

    def drop(self, scope: str) -> None:
        self._tokens.pop(scope, None)

    def __len__(self) -> int:
        return len(self._tokens)
