"""Loopback networking helpers: free ports, proxy-free environments, tiny HTTP client."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message

LOOPBACK = "127.0.0.1"

_PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ftp_proxy",
)


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    The port is not reserved; a process that binds it later may, rarely, race
    with someone else. Callers that can bind a socket themselves should prefer
    binding port 0 directly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``os.environ`` without any proxy variables (any case).

    Child processes (skopeo, docker-registry) started with this env never route
    through an HTTP proxy. ``extra`` entries are added last.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    if extra:
        env.update(extra)
    return env


@dataclass
class HTTPResponse:
    """A fully read HTTP response; ``headers`` lookups are case-insensitive."""

    status: int
    headers: Message
    body: bytes = field(repr=False)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of header ``name`` or ``default``."""
        value = self.headers.get(name)
        return default if value is None else value


def basic_auth_header(user: str, password: str) -> str:
    """Return the value of an ``Authorization: Basic ...`` header."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


Headers = Mapping[str, str] | Sequence[tuple[str, str]]
"""A mapping, or ``(name, value)`` pairs when a header must be repeated (e.g. ``Accept``)."""


def http_request(
    method: str,
    url: str,
    *,
    headers: Headers | None = None,
    data: bytes | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> HTTPResponse:
    """Send one plain-HTTP request (no proxies, no redirects) and read the whole body.

    Every status is returned, never raised; connection errors and timeouts propagate
    as ``OSError`` (``ConnectionRefusedError``, ``TimeoutError``, ...).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    if auth is not None:
        pairs.append(("Authorization", basic_auth_header(*auth)))
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in pairs:
            conn.putheader(name, value)
        if data is not None or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(data or b"")))
        conn.endheaders(data)
        resp = conn.getresponse()
        body = resp.read()
        return HTTPResponse(resp.status, resp.headers, body)
    finally:
        conn.close()


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it returns true; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Blackhole:
    """A loopback port where TCP connects hang (its accept queue is full and nobody
    accepts), standing in for an upstream whose packets are dropped: a connect time-out."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind((LOOPBACK, 0))
        self._server.listen(0)
        self.port = int(self._server.getsockname()[1])
        self._fillers: list[socket.socket] = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # completes in the background
                filler.connect((LOOPBACK, self.port))
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        for sock in (*self._fillers, self._server):
            sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metrics_of(debug_url: str) -> dict[str, float]:
    """Every sample of the mirror's ``/metrics`` (on its debug address): ``name{labels}`` →
    value."""
    text = http_request("GET", f"{debug_url}/metrics").body.decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def get_expecting_a_failed_transfer(host: str, path: str) -> None:
    """GET ``path``: the headers say 200 (they go out before the last byte is checked),
    and the body is cut short, never completed."""
    import pytest  # only the tests that use this need it

    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()
