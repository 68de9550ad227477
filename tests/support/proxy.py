"""A recording, fault-injecting HTTP reverse proxy for standing in front of an upstream registry.

The proxy runs an aiohttp server on ``127.0.0.1:<port>`` in a background thread
(own event loop). Every request is forwarded verbatim to ``target`` (minus Host
and hop-by-hop headers), the response is streamed back without following
redirects, and each exchange is recorded once it finishes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .servers import Records, ThreadedApp

# RFC 9110 hop-by-hop headers plus ones aiohttp must compute itself.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)


@dataclass(frozen=True)
class Exchange:
    """One proxied request as seen by the client.

    ``status`` is what the client got (``0`` if the connection was dropped before
    headers); ``bytes_sent`` counts response body bytes written to the client;
    ``forwarded`` tells whether the upstream was contacted at all; ``fault`` names
    the injected fault (``"fail_status"``, ``"corrupt"``, ``"drop"``, ``"stall"``) or
    is ``None``; ``error`` describes an upstream connection failure.
    """

    method: str
    path: str
    query: str
    status: int
    bytes_sent: int
    forwarded: bool
    fault: str | None = None
    error: str | None = None
    request_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    response_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    started: float = field(default=0.0, repr=False, compare=False)
    duration: float = field(default=0.0, repr=False, compare=False)

    @property
    def is_blob_get(self) -> bool:
        return self.method == "GET" and _is_blob_path(self.path)

    def request_header(self, name: str) -> list[str]:
        """All values of request header ``name`` (case-insensitive), in order.

        Clients may repeat a header (skopeo sends one ``Accept`` line per media type).
        """
        return [v for k, v in self.request_headers if k.lower() == name.lower()]

    def response_header(self, name: str) -> list[str]:
        """All values of response header ``name`` (case-insensitive), in order."""
        return [v for k, v in self.response_headers if k.lower() == name.lower()]

    def as_tuple(self) -> tuple[str, str, int, int]:
        """``(method, path, status, bytes_sent)``."""
        return (self.method, self.path, self.status, self.bytes_sent)


def _is_blob_path(path: str) -> bool:
    return "/blobs/" in path and "/blobs/uploads" not in path


class RecordingProxy(ThreadedApp):
    """Reverse proxy to ``target`` (e.g. ``http://127.0.0.1:5000``) that records traffic.

    Fault knobs are plain attributes, safe to flip from the test thread at any time;
    each request reads them once when it arrives:

    * ``fail_status``: answer every request with this status, upstream untouched.
    * ``stall_seconds``: sleep this long before handling a request.
    * ``corrupt_blobs``: on ``GET .../blobs/<digest>`` flip one byte of the body
      (the middle byte if the length is known, else the first); length unchanged.
    * ``drop_after``: on ``GET .../blobs/<digest>`` close the connection after this
      many body bytes (headers, incl. the full Content-Length, are already sent).
    * ``blob_rate``: on ``GET .../blobs/<digest>`` send at most this many body bytes
      per second (a slow upstream, so a test can act while a fetch is in flight).
    * ``fail_headers`` / ``fail_body`` / ``fail_content_type``: the headers, body and
      type of the ``fail_status`` answer (a 429 with ``Retry-After``, an HTML page 200).
    * ``stall_body_after`` + ``stall_body_seconds``: on a blob GET, pause this long once
      after this many body bytes (a read that stalls mid-body).
    * ``tamper_manifests``: on a manifest GET, append a newline to the body (so its
      digest is no longer the one asked for), keeping the upstream's digest header.
    * ``overlong_blobs``: on a blob GET, send this many junk bytes after the body the
      Content-Length announced, then close the connection.
    * ``redirect_blobs_to``: a base URL; a blob GET the upstream would answer 200 is
      answered ``307`` to ``<base>/blobs/<digest>?expires=...`` instead (Docker Hub's CDN).
    * ``fault_path_contains``: if set, ``fail_status`` and ``stall_seconds`` only
      apply to paths containing this substring.
    * ``fault_methods``: if set, ``fail_status`` and ``stall_seconds`` only apply to
      requests with one of these methods (e.g. an S3 upload's part PUTs, not its POSTs).
    * ``tags_page``: answer ``GET .../tags/list`` in pages of at most this many tags
      (``n`` and ``last`` honoured, ``Link: <...>; rel="next"`` while more follow), as
      Docker Hub and distribution 3 do; the test registry (2.8) ignores ``n``.
    * ``fail_count``: with ``fail_status``, fail only this many requests, then stop failing.
    * ``ratelimit_remaining`` (+ ``ratelimit_limit``): Docker Hub's pull quota. Every
      response carries ``ratelimit-limit``/``ratelimit-remaining`` (``N;w=21600``); each
      manifest GET spends one (HEADs are free); at 0 a manifest GET is answered 429 with
      ``Retry-After: ratelimit_retry_after``, the upstream untouched.

    Location headers pointing at ``target`` are rewritten to point at the proxy.

    Serving (``start``/``stop``, ``with``, ``port``/``host``/``url``/``running``) is
    ``servers.ThreadedApp``'s: ``url`` is ``http://127.0.0.1:PORT`` and the port is kept
    across ``stop()``/``start()``.
    """

    def __init__(self, target: str, *, port: int = 0, chunk_size: int = 64 * 1024) -> None:
        super().__init__(port=port)
        self.target = target.rstrip("/")
        self.chunk_size = chunk_size
        self._log: Records[Exchange] = Records()
        self.fail_status: int | None = None
        self.fail_headers: dict[str, str] = {}
        self.fail_body: str | None = None
        self.fail_content_type: str = "text/plain"
        self.stall_body_after: int | None = None
        self.stall_body_seconds: float = 0.0
        self.tamper_manifests: bool = False
        self.overlong_blobs: int | None = None
        self.redirect_blobs_to: str | None = None
        self.stall_seconds: float = 0.0
        self.corrupt_blobs: bool = False
        self.drop_after: int | None = None
        self.blob_rate: int | None = None
        self.fault_path_contains: str | None = None
        self.fault_methods: set[str] | None = None
        self.fail_count: int | None = None
        # Forward the client's Host header (an S3 server checks signatures made for it).
        self.forward_host = False
        self.tags_page: int | None = None
        self.ratelimit_remaining: int | None = None
        self.ratelimit_limit: int = 100
        self.ratelimit_retry_after: int = 60
        # A load balancer: each request goes to the next of these (``target`` unless set).
        self.round_robin: list[str] = []
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ faults
    def clear_faults(self) -> None:
        """Reset every fault knob to its harmless default."""
        self.fail_status = None
        self.fail_headers = {}
        self.fail_body = None
        self.fail_content_type = "text/plain"
        self.stall_body_after = None
        self.stall_body_seconds = 0.0
        self.tamper_manifests = False
        self.overlong_blobs = None
        self.redirect_blobs_to = None
        self.stall_seconds = 0.0
        self.corrupt_blobs = False
        self.drop_after = None
        self.blob_rate = None
        self.fault_path_contains = None
        self.fault_methods = None
        self.fail_count = None
        self.tags_page = None
        self.ratelimit_remaining = None
        self.ratelimit_limit = 100
        self.ratelimit_retry_after = 60

    def _quota_headers(self, request: web.Request) -> dict[str, str] | None:
        """Spend the quota for a manifest GET; the headers to send (None: quota off).
        Runs on the proxy's own loop, one request at a time between awaits."""
        if self.ratelimit_remaining is None:
            return None
        if request.method == "GET" and "/manifests/" in request.path:
            self.ratelimit_remaining = max(0, self.ratelimit_remaining - 1)
        return {
            "ratelimit-limit": f"{self.ratelimit_limit};w=21600",
            "ratelimit-remaining": f"{self.ratelimit_remaining};w=21600",
        }

    # ------------------------------------------------------------------ records
    def requests(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        status: int | None = None,
    ) -> list[Exchange]:
        """Snapshot of recorded exchanges, oldest first, optionally filtered."""
        return [
            e
            for e in self._log.snapshot()
            if (method is None or e.method == method.upper())
            and (path_contains is None or path_contains in e.path)
            and (status is None or e.status == status)
        ]

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        status: int | None = None,
    ) -> int:
        """Number of recorded exchanges matching the filters."""
        return len(self.requests(method, path_contains, status=status))

    def bytes_for(self, path_contains: str | None = None, method: str | None = "GET") -> int:
        """Total response body bytes sent to clients for matching exchanges."""
        return sum(e.bytes_sent for e in self.requests(method, path_contains))

    def blob_gets(self) -> list[Exchange]:
        """Recorded ``GET .../blobs/<digest>`` exchanges."""
        return [e for e in self.requests("GET") if _is_blob_path(e.path)]

    def reset(self) -> None:
        """Forget all recorded exchanges (faults are kept; see ``clear_faults``)."""
        self._log.clear()

    def wait_for(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        at_least: int = 1,
        timeout: float = 10.0,
    ) -> list[Exchange]:
        """Block until ``at_least`` matching exchanges are recorded; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests(method, path_contains)
            if len(found) >= at_least:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(found)}/{at_least} {method} {path_contains!r} after {timeout}s"
                )
            time.sleep(0.02)

    # ------------------------------------------------------------------ serving
    async def _make_app(self) -> web.Application:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            # A fresh upstream connection per request: no stale pooled connections after
            # the upstream registry is stopped and restarted.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
        )
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _shutdown(self) -> None:
        await super()._shutdown()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        where = self.url if self._port else "unbound"
        return f"<RecordingProxy {where} -> {self.target} records={len(self._log)}>"

    # ------------------------------------------------------------------ request handling
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        tally = _Tally(self, request)
        path = request.path
        # Read the knobs once so a request sees a consistent fault configuration.
        scoped = (self.fault_path_contains is None or self.fault_path_contains in path) and (
            self.fault_methods is None or request.method in self.fault_methods
        )
        fail_status = self.fail_status if scoped else None
        stall = self.stall_seconds if scoped else 0.0
        is_blob_get = request.method == "GET" and _is_blob_path(path)
        corrupt = self.corrupt_blobs and is_blob_get
        drop_after = self.drop_after if is_blob_get else None
        rate = self.blob_rate if is_blob_get else None
        spent_out = (
            self.ratelimit_remaining == 0 and request.method == "GET" and "/manifests/" in path
        )
        quota = self._quota_headers(request)
        if spent_out:
            fail_status = 429
        elif fail_status is not None and self.fail_count is not None:
            self.fail_count -= 1
            if self.fail_count <= 0:
                self.fail_status = self.fail_count = None
        try:
            if stall and stall > 0:
                tally.fault = "stall"
                await asyncio.sleep(stall)

            if fail_status is not None:
                text = self.fail_body or f"injected failure {fail_status}\n"
                tally.fault, tally.status = "fail_status", fail_status
                tally.sent = 0 if request.method == "HEAD" else len(text)
                headers = dict(self.fail_headers)
                if quota is not None:
                    headers.update(quota)
                if spent_out:
                    headers["Retry-After"] = str(self.ratelimit_retry_after)
                tally.response_headers = tuple(headers.items())
                tally.commit()
                return web.Response(
                    status=fail_status,
                    text=text,
                    content_type=self.fail_content_type,
                    headers=headers,
                )

            assert self._session is not None
            if self.tags_page and request.method == "GET" and path.endswith("/tags/list"):
                return await self._tags_page(request, tally, self.tags_page)
            fwd_headers = CIMultiDict(
                (k, v)
                for k, v in request.headers.items()
                if k.lower() not in _HOP_BY_HOP and (k.lower() != "host" or self.forward_host)
            )
            body = await request.read() if request.can_read_body else None
            tally.forwarded = True
            target = self.target
            if self.round_robin:
                target = self.round_robin[self._turn % len(self.round_robin)].rstrip("/")
                self._turn += 1
            try:
                upstream = await self._session.request(
                    request.method,
                    target + request.rel_url.raw_path_qs,
                    headers=fwd_headers,
                    data=body if body else None,
                    allow_redirects=False,
                    skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                text = f"proxy: upstream unreachable: {err!r}\n"
                tally.error, tally.status, tally.sent = repr(err), 502, len(text)
                tally.commit()
                return web.Response(status=502, text=text)
            try:
                return await self._relay(
                    request, upstream, tally, corrupt, drop_after, rate, extra=quota
                )
            finally:
                upstream.release()
        except (ConnectionError, aiohttp.ClientError) as err:
            tally.error = repr(err)
            raise
        finally:
            tally.commit()

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        tally: _Tally,
        corrupt: bool,
        drop_after: int | None,
        rate: int | None = None,
        *,
        extra: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Stream ``upstream`` to the client (``extra``: headers added to the upstream's).

        The exchange is committed to the log just before the write that lets the
        client finish (last chunk, EOF, or the deliberate close), so a test that
        has its response in hand always finds the exchange recorded.
        """
        path = request.path
        is_blob_get = request.method == "GET" and _is_blob_path(path)
        if (
            self.tamper_manifests
            and request.method == "GET"
            and "/manifests/" in path
            and upstream.status == 200
        ):
            return await self._tampered_manifest(request, upstream, tally)
        if self.redirect_blobs_to and is_blob_get and upstream.status == 200:
            digest = path.rsplit("/", 1)[1]
            location = f"{self.redirect_blobs_to}/blobs/{digest}?expires=9999999999&sig=x"
            tally.fault, tally.status = "redirect", 307
            tally.commit()
            return web.Response(status=307, headers={"Location": location})
        stall_after = self.stall_body_after if is_blob_get else None
        stall_seconds = self.stall_body_seconds
        overlong = self.overlong_blobs if is_blob_get and upstream.status == 200 else None
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() in _HOP_BY_HOP:
                continue
            if k.lower() == "location" and v.startswith(self.target):
                v = self.url + v[len(self.target) :]
            out.headers.add(k, v)
        for k, v in (extra or {}).items():
            out.headers[k] = v
        length = upstream.content_length
        if length is not None:
            out.content_length = length
        tally.status = upstream.status
        tally.response_headers = tuple(out.headers.items())

        async def read() -> bytes:
            return await upstream.content.read(self.chunk_size)

        chunk = b"" if request.method == "HEAD" else await read()
        if not chunk:
            # HEAD or empty body (drop_after=0 closes right after the headers were queued).
            if drop_after is not None:
                tally.fault = "drop"
            tally.commit()
            await out.prepare(request)
            if drop_after is not None:
                _drop_connection(request)
            else:
                await out.write_eof()
            return out

        await out.prepare(request)
        corrupt_at = (length // 2 if length else 0) if corrupt else -1
        offset = 0
        while chunk:
            following = await read()
            dropping = drop_after is not None and (
                offset + len(chunk) >= drop_after or not following
            )
            if drop_after is not None and dropping:
                # Also drops when the body is shorter than drop_after: with drop_after
                # set the client never sees the clean end of a blob body.
                chunk = chunk[: max(0, drop_after - offset)]
                tally.fault = "drop"
            if offset <= corrupt_at < offset + len(chunk):
                buf = bytearray(chunk)
                buf[corrupt_at - offset] ^= 0xFF
                chunk = bytes(buf)
                tally.fault = "corrupt"
            if dropping or not following:
                tally.sent = offset + len(chunk)
                tally.commit()
            if chunk:
                await out.write(chunk)
                if stall_after is not None and offset < stall_after <= offset + len(chunk):
                    tally.fault = "stall_body"
                    await asyncio.sleep(stall_seconds)
                offset += len(chunk)
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
                tally.sent = max(tally.sent, offset)
            if dropping:
                _drop_connection(request)
                return out
            chunk = following
        await out.write_eof()
        if overlong:
            tally.fault = "overlong"
            if request.transport is not None:
                request.transport.write(b"\0" * overlong)
            _drop_connection(request)
        return out

    async def _tags_page(
        self, request: web.Request, tally: _Tally, page: int
    ) -> web.StreamResponse:
        """One page of the upstream's whole tag list, with a Link to the next."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        tally.forwarded = True
        async with self._session.get(self.target + request.path, headers=headers) as upstream:
            body = await upstream.read()
            if upstream.status != 200:
                tally.status, tally.sent = upstream.status, len(body)
                return web.Response(status=upstream.status, body=body)
            doc = json.loads(body)
        tags = sorted(doc.get("tags") or [])
        last = request.query.get("last")
        if last:
            tags = [t for t in tags if t > last]
        size = min(page, int(request.query.get("n", page)))
        shown, more = tags[:size], len(tags) > size
        out = json.dumps({"name": doc.get("name"), "tags": shown}).encode()
        extra = {"Content-Type": "application/json"}
        if more:
            extra["Link"] = f'<{request.path}?last={shown[-1]}&n={size}>; rel="next"'
        tally.status, tally.sent = 200, len(out)
        tally.response_headers = tuple(extra.items())
        return web.Response(status=200, body=out, headers=extra)

    async def _tampered_manifest(
        self, request: web.Request, upstream: aiohttp.ClientResponse, tally: _Tally
    ) -> web.StreamResponse:
        body = await upstream.read() + b"\n"
        headers = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        }
        tally.fault, tally.status, tally.sent = "tamper", upstream.status, len(body)
        tally.commit()
        return web.Response(status=upstream.status, body=body, headers=headers)


class _Tally:
    """What is known so far about one exchange; appended to the log exactly once."""

    def __init__(self, proxy: RecordingProxy, request: web.Request) -> None:
        self.proxy = proxy
        self.request = request
        self.started = time.monotonic()
        self.status = 0
        self.sent = 0
        self.forwarded = False
        self.fault: str | None = None
        self.error: str | None = None
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.committed = False

    def commit(self) -> None:
        if self.committed:
            return
        self.committed = True
        self.proxy._log.add(
            Exchange(
                method=self.request.method,
                path=self.request.path,
                query=self.request.query_string,
                status=self.status,
                bytes_sent=self.sent,
                forwarded=self.forwarded,
                fault=self.fault,
                error=self.error,
                request_headers=tuple(self.request.headers.items()),
                response_headers=self.response_headers,
                started=self.started,
                duration=time.monotonic() - self.started,
            )
        )


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        # close() flushes what was already written, then sends FIN: the client
        # sees exactly the bytes counted in ``bytes_sent`` and then EOF.
        transport.close()


def exchanges_summary(exchanges: Iterable[Exchange]) -> str:
    """One line per exchange, for assertion messages."""
    return "\n".join(
        f"{e.method} {e.path}{'?' + e.query if e.query else ''} -> {e.status} {e.bytes_sent}B"
        f"{' [' + e.fault + ']' if e.fault else ''}{' !' + e.error if e.error else ''}"
        for e in exchanges
    )


ProxyFactory = Callable[[str], RecordingProxy]
"""Type of the ``proxy_factory`` fixture: ``factory(target_url) -> started RecordingProxy``."""
