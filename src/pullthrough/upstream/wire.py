"""Blob downloads over blocking sockets, driven from download threads.

aiohttp reads a response body on the event loop: parsing each piece and copying it into a
StreamReader cost the loop thread ~1.1 s per GiB (measured), the cold path's bottleneck on
a 2-core machine. A blob body instead goes from the socket straight into the downloader's
own buffer (``WireResponse.readinto`` in a download thread: ``recv_into``, or ``SSL_read``
for TLS, both without the GIL), so the event loop only sees where the download has got to.

``WireSession`` speaks the HTTP/1.1 a blob GET needs: one request, its status line and
headers (parsed by ``http.client``), the body read by the caller, and the connection kept
for the next request to the same origin when the body was read to its end. Everything
around a request (credentials, redirects, retries, the circuit breaker, the outbound policy)
is ``upstream.client``'s, as for every other request; the address connected to comes from
the same policy-checking resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDict, CIMultiDictProxy

from pullthrough.upstream.outbound import parse_address

# Download threads: one per download at most (bounded per upstream by its download slots);
# created when needed. Never the default executor: a silent upstream holds a thread for
# up to the stall window, which must not starve the store's file work.
DOWNLOADS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="pullthrough-download")
# Idle connections kept per origin, and for how long (registries close theirs after ~60 s).
POOL_PER_ORIGIN = 16
POOL_IDLE_SECONDS = 15.0
MAX_HEAD = 64 * 1024  # status line and headers together
USER_AGENT = "pullthrough"

Origin = tuple[str, str, int]


class Unreachable(aiohttp.ClientConnectionError):
    """No connection could be made (refused, no route, no name, connect time-out)."""


class WireResponse:
    """One answer: status and headers at once, the body through ``readinto`` (blocking: call
    it from a download thread). ``release`` when done: the connection is kept for reuse
    only if the body was read to its end."""

    def __init__(
        self, session: WireSession, origin: Origin, sock: socket.socket, url: str, method: str
    ) -> None:
        self._session = session
        self._origin = origin
        self._sock: socket.socket | None = sock
        self._answer = http.client.HTTPResponse(sock, method=method)
        self.url = url
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self._left: int | None = None  # body bytes still to come, when the length is known
        self._eof = False
        self._early = b""  # body bytes that arrived with the head

    def _begin(self) -> None:
        answer = self._answer
        answer.begin()
        self.status = answer.status
        self.headers = CIMultiDictProxy(CIMultiDict(answer.getheaders()))
        self._left = answer.length  # 0 for a body-less answer; None: chunked or until close
        if not answer.chunked and self._left != 0 and answer.fp is not None:
            # The body's first bytes may have come with the head, into the reader's buffer:
            # take them now without waiting, so they are handed over at once (readinto1
            # would hand them over only with the next read of the socket).
            sock = self._sock
            assert sock is not None
            timeout = sock.gettimeout()
            sock.settimeout(0.0)
            try:
                # Never a second read: the buffer is at most 8 KiB (io.DEFAULT_BUFFER_SIZE).
                self._early = answer.fp.read1(65536) or b""
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            finally:
                sock.settimeout(timeout)
            if self._left is not None:
                self._left -= len(self._early)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isascii() and value.isdigit() else None

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type", "application/octet-stream")
        return value.split(";", 1)[0].strip().lower()

    @property
    def ended(self) -> bool:
        """The body was read to its end."""
        if self._answer.chunked:
            return self._answer.isclosed()
        return not self._early and (self._left == 0 or self._eof)

    def readinto(self, view: memoryview, timeout: float) -> int:
        """Read what has arrived of the body into ``view`` (at least one byte, waiting at
        most ``timeout`` seconds for it); 0 at the end of the body. Raises TimeoutError,
        OSError (the connection broke) or http.client.IncompleteRead (a chunked body cut
        short)."""
        sock = self._sock
        fp = self._answer.fp
        if sock is None:
            raise ConnectionError("the connection was closed")
        sock.settimeout(timeout)
        if self._answer.chunked:
            return self._answer.readinto(view)  # rare for a blob: http.client de-chunks
        if self._early:
            count = min(len(view), len(self._early))
            view[:count] = self._early[:count]
            self._early = self._early[count:]
            return count
        if self._left is not None:
            view = view[: self._left]
        if not view or fp is None:
            return 0
        # The head's reader holds nothing more (``_begin`` took it): read the socket
        # itself, whatever one read gives (a slow upstream's bytes reach the readers as
        # they come), without two Python layers per read (TLS reads a 16 KiB record each).
        count = sock.recv_into(view)
        if count == 0:
            if self._left:
                raise ConnectionError(f"connection closed with {self._left} bytes to come")
            self._eof = True
        elif self._left is not None:
            self._left -= count
        return count

    def abort(self) -> None:
        """Break the connection now (from any thread): a read blocked on it returns."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def release(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        reusable = self.ended and not self._answer.will_close
        self._answer.close()
        if reusable:
            self._session.keep(self._origin, sock)
        else:
            _close(sock)


class WireSession:
    """Blob GETs of one upstream (and the redirect targets it sends them to)."""

    def __init__(
        self, *, resolver: AbstractResolver, connect_timeout: float, read_timeout: float
    ) -> None:
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[Origin, list[tuple[socket.socket, float]]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> WireResponse:
        """Send one request and read the answer's status line and headers. Redirects are
        not followed (the caller checks each target). Raises Unreachable when no
        connection could be made, aiohttp.ServerTimeoutError when the answer took longer
        than the read time-out, aiohttp.ServerDisconnectedError when the connection broke
        before an answer."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, host.lower(), port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if parts.query else "?") + urlencode(params)
        host_header = parts.netloc.rpartition("@")[2]
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
        given = {name.lower() for name in headers}
        for name, value in (
            ("User-Agent", USER_AGENT),
            ("Accept", "*/*"),
            ("Accept-Encoding", "identity"),
        ):
            if name.lower() not in given:
                lines.append(f"{name}: {value}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if scheme == "https" and self._tls is None:
            # Loading the trust store reads files: not on the event loop.
            self._tls = await asyncio.get_running_loop().run_in_executor(
                DOWNLOADS, ssl.create_default_context
            )
        addresses: list[tuple[str, int]] | None = None
        if parse_address(host) is None and self._pooled(origin) is None:
            try:
                found = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
            except OSError as exc:
                raise Unreachable(f"cannot resolve {host}: {exc}") from exc
            addresses = [(r["host"], r["port"]) for r in found]
        work = asyncio.get_running_loop().run_in_executor(
            DOWNLOADS, self._exchange, origin, addresses, head, url, method
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The exchange goes on in its thread: close whatever it ends with.
            work.add_done_callback(_release_result)
            raise

    def _exchange(
        self,
        origin: Origin,
        addresses: list[tuple[str, int]] | None,
        head: bytes,
        url: str,
        method: str,
    ) -> WireResponse:
        while True:
            pooled = self._pooled(origin, take=True)
            sock = pooled if pooled is not None else self._connect(origin, addresses)
            try:
                sock.settimeout(self._read_timeout)
                sock.sendall(head)
                answer = WireResponse(self, origin, sock, url, method)
                answer._begin()
                return answer
            except TimeoutError as exc:
                _close(sock)
                raise aiohttp.ServerTimeoutError(
                    f"no answer within {self._read_timeout:g} s"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                _close(sock)
                if pooled is not None:
                    continue  # the upstream had closed the idle connection: a fresh one
                raise aiohttp.ServerDisconnectedError(f"{type(exc).__name__}: {exc}") from exc

    def _connect(self, origin: Origin, addresses: list[tuple[str, int]] | None) -> socket.socket:
        scheme, host, port = origin
        if addresses is None:
            addresses = [(host.strip("[]"), port)]
        error: OSError | None = None
        for address in addresses:
            try:
                sock = socket.create_connection(address, timeout=self._connect_timeout)
            except TimeoutError as exc:
                # Like aiohttp's: not retried (it cost the connect time-out already).
                raise aiohttp.ConnectionTimeoutError(
                    f"connecting to {host}:{port} timed out ({self._connect_timeout:g} s)"
                ) from exc
            except OSError as exc:
                error = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme != "https":
                return sock
            assert self._tls is not None
            try:
                return self._tls.wrap_socket(sock, server_hostname=host.strip("[]"))
            except TimeoutError as exc:
                _close(sock)
                error = exc
            except OSError as exc:  # ssl.SSLError too: a certificate not trusted, say
                _close(sock)
                error = exc
        raise Unreachable(f"cannot connect to {host}:{port}: {error}")

    def keep(self, origin: Origin, sock: socket.socket) -> None:
        """Keep a connection whose last answer was read to its end, for the next request."""
        if _readable(sock):  # bytes beyond the answer, or the upstream closed it: not reusable
            _close(sock)
            return
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if self._closed or len(idle) >= POOL_PER_ORIGIN:
                _close(sock)
                return
            idle.append((sock, time.monotonic()))

    def _pooled(self, origin: Origin, *, take: bool = False) -> socket.socket | None:
        """An idle connection to ``origin`` that is still good (removed from the pool when
        ``take``), or None."""
        with self._lock:
            idle = self._idle.get(origin, [])
            while idle:
                sock, since = idle[-1]
                if time.monotonic() - since > POOL_IDLE_SECONDS or _readable(sock):
                    idle.pop()
                    _close(sock)
                    continue
                if take:
                    idle.pop()
                return sock
        return None

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for sock, _ in connections:
                _close(sock)


class OperatorWire:
    """A WireSession made on first use, for addresses the operator named rather than an
    upstream: the bucket's endpoint, the other replicas. No outbound policy applies (they
    are often private addresses, which upstreams may not be); names resolve in a thread."""

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._session: WireSession | None = None

    @property
    def session(self) -> WireSession:
        if self._session is None:
            self._session = WireSession(
                resolver=aiohttp.ThreadedResolver(),
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _readable(sock: socket.socket) -> bool:
    """Whether reading would not block: on an idle connection, bytes nobody asked for or
    the peer's close (ends the connection's use)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    try:
        return bool(poll.poll(0))
    except OSError:
        return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _release_result(work: asyncio.Future[WireResponse]) -> None:
    if not work.cancelled() and work.exception() is None:
        work.result().release()
