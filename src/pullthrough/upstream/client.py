"""One client per remote registry: pooled connections, auth challenges, redirects, time-outs.

Every failure leaves this module as a registry error the mirror can act on:
UpstreamUnavailable (unreachable, timed out, 5xx, or the mirror busy: a 503 with
Retry-After), TooManyRequests (429, with Retry-After), Unauthorized/Denied (the upstream
refused the mirror's credentials). A 404 is returned as ``None`` by the methods that ask
"does it exist": the caller decides what it means.

Two connection pools per upstream: aiohttp's for manifests, tags, blob HEADs and tokens,
and ``upstream.wire``'s for blob downloads (their bodies are read in download threads, off
the event loop), so downloads can never starve the small requests a pull starts with.
Neither pool makes a request wait inside it: the metadata requests are bounded by ``Slots``
here and the downloads by ``download_slot``, each with a bounded wait of its own. So a
connect time-out always means the socket connect (or name look-up) timed out, and only
that, with refused connections, counts towards the circuit breaker (``upstream.breaker``)
that decides the upstream is down. Both kinds of request take the same path through this
module (credentials, redirects, retries): only the last step, one exchange, differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDict, CIMultiDictProxy

from pullthrough.config import UpstreamConfig
from pullthrough.errors import (
    Denied,
    OutboundRefused,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamInvalid,
    UpstreamUnavailable,
)
from pullthrough.manifest import MAX_MANIFEST_SIZE, OCI_INDEX
from pullthrough.metrics import Metrics
from pullthrough.upstream.auth import (
    parse_challenge,
)
from pullthrough.upstream.bodies import NETWORK_ERRORS, read_capped
from pullthrough.upstream.breaker import Breaker, State, Ticket
from pullthrough.upstream.latency import Latency
from pullthrough.upstream.outbound import (
    MAX_REDIRECTS,
    Outbound,
    OutboundPolicy,
    PolicyResolver,
    origin_of,
)
from pullthrough.upstream.ratelimit import RateLimit
from pullthrough.upstream.slots import NoSlot, Slots
from pullthrough.upstream.tokens import UpstreamAuth
from pullthrough.upstream.wire import Unreachable, WireResponse, WireSession

log = logging.getLogger(__name__)

# Back-off before each retry of a request that failed to connect or lost its connection.
CONNECT_RETRY_BACKOFF = (0.1, 0.4)
# Manifest, tag, blob HEAD requests in flight to one upstream at once; more wait (up to
# the connect time-out) for one of these to end. Tokens are fetched outside this bound
# (one per scope at a time): a request holding a slot may need one.
METADATA_SLOTS = 32
# How long a new download waits for a free slot (mirror.upstream_max_downloads) before
# the client is told 503 + Retry-After: long enough to ride out a burst (downloads nobody
# reads any more are cancelled within about a second, mirror.fetches), short enough that
# nothing queues without bound.
DOWNLOAD_SLOT_WAIT = 3.0
# What a busy mirror tells a client to wait (seconds) before asking again.
BUSY_RETRY_AFTER = 2
# While the circuit is open, a request waits this long for the probe (``GET /v2/``, run
# apart from it) before it fails: long enough for an upstream that is back to answer, so
# the request goes on; short enough that cached content is still served at once when the
# probe hangs on an unreachable address.
PROBE_PATIENCE = 0.5
# Large reads keep the per-chunk overhead (thread hops, hashing calls) small on big blobs.
READ_BUFSIZE = 1024 * 1024  # 4 MiB cost 35 MiB more RSS under 20 cold streams, no speed

E = TypeVar("E", bound=RegistryError)
# Failures that say the upstream cannot be reached at all (refused, no route, no name,
# connect time-out), as opposed to one slow or broken answer. With no connector limit,
# ConnectionTimeoutError is the socket connect (or look-up) only, never a pool wait.
_UNREACHABLE = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, Unreachable)


class Answer(Protocol):
    """What this module reads of an upstream's answer, from aiohttp or ``upstream.wire``."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def url(self) -> object: ...
    @property
    def content_length(self) -> int | None: ...
    def release(self) -> object: ...


A = TypeVar("A", bound=Answer)
# One exchange (method, url, headers, params): send the request, return the answer's head.
Exchange = Callable[[str, str, CIMultiDict[str], dict[str, str] | None], Awaitable[A]]


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str | None
    media_type: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class ManifestBody:
    body: bytes
    media_type: str | None
    digest: str | None  # the upstream's Docker-Content-Digest header, if it sent one


@dataclass(slots=True)
class BlobStream:
    """An open upstream blob body starting at ``offset``; ``size`` is the whole blob's. The
    body is read with ``response.readinto`` from a download thread (``upstream.wire``)."""

    response: WireResponse
    offset: int
    size: int | None


class UpstreamClient:
    """Talks to one remote registry on behalf of the mirror.

    Every URL it requests (the upstream, a redirect target, a token realm) passes
    ``outbound`` (see ``upstream.outbound``); by default that is the policy with an empty
    allow-list, under which this upstream's own host is trusted. ``resolver`` replaces
    aiohttp's DNS resolver under the policy (tests)."""

    def __init__(
        self,
        config: UpstreamConfig,
        metrics: Metrics | None = None,
        *,
        outbound: Outbound | None = None,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.name = config.name
        self.base = config.url.rstrip("/")
        self.outbound = outbound or OutboundPolicy().for_upstream(config.url)
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._wire: WireSession | None = None
        self.auth = UpstreamAuth(self)
        self.rate_limit = RateLimit(
            config.name,
            # Created on the first header seen: an unknown quota is absent, not zero.
            on_remaining=lambda n: self.metrics.ratelimit_remaining.labels(config.name).set(n),
        )
        self.last_ok: float | None = None  # time.time() of the last answer below 500
        self.last_error: str | None = None
        self.latency = Latency()  # the upstream's own answers, not a redirect target's
        self._clock = clock
        self.breaker = Breaker(clock=clock, on_change=self._show_circuit)
        self._probing: asyncio.Task[None] | None = None
        self._show_circuit(self.breaker.state)
        self._metadata = Slots(METADATA_SLOTS)
        self.downloads = Slots(config.max_downloads)
        self.metrics.upstream_downloads.labels(config.name).set_function(
            lambda: self.downloads.in_use
        )
        # Switched off by the operator (``offline``): no request leaves for it at all.
        self.offline = config.offline
        self.in_use = 0  # requests (and the downloads they stream) under way now
        self.last_active = clock()  # when the last of them ended (``clock``'s time)

    def _show_circuit(self, now: State) -> None:
        for state in State:
            self.metrics.upstream_circuit.labels(self.name, state.value).set(int(state is now))

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pool for manifests, tags, blob HEADs and tokens."""
        if self._session is None:
            self._session = self._new_session()
        return self._session

    @property
    def wire(self) -> WireSession:
        """The pool for blob downloads (at most ``max_downloads`` at once)."""
        if self._wire is None:
            self._wire = WireSession(
                resolver=PolicyResolver(self.outbound, self._resolver),
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.read_timeout,
            )
        return self._wire

    def _new_session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(
            total=None,
            # No connector limit (below): ``connect`` never includes waiting for a pooled
            # connection, only the look-up and the socket connect.
            connect=self.config.connect_timeout,
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.read_timeout,
        )
        return aiohttp.ClientSession(
            timeout=timeout,
            read_bufsize=READ_BUFSIZE,
            auto_decompress=False,
            trust_env=False,
            connector=aiohttp.TCPConnector(
                limit=0,  # bounded by Slots instead, whose wait is not a connect failure
                ttl_dns_cache=60,
                # Names are checked on what they resolve to, when connecting.
                resolver=PolicyResolver(self.outbound, self._resolver),
            ),
        )

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
        if self._session is not None:
            await self._session.close()
        if self._wire is not None:
            await self._wire.close()
        self._session = self._wire = None

    @asynccontextmanager
    async def download_slot(self) -> AsyncIterator[None]:
        """Hold one of this upstream's ``max_downloads`` download slots for the body (a
        whole fetch, resumes included). Raises UpstreamUnavailable (503, Retry-After)
        when none comes free within ``DOWNLOAD_SLOT_WAIT``: beyond the cap clients are
        told to come back, never queued without bound."""
        try:
            async with self.downloads.hold(DOWNLOAD_SLOT_WAIT):
                yield
        except NoSlot:
            raise self._busy(
                "downloads",
                f"upstream {self.name}: {self.downloads.size} downloads from it are under way "
                "already (mirror.upstream_max_downloads); try again shortly",
            ) from None

    # --- public calls ------------------------------------------------------------------

    async def head_manifest(
        self, repo: str, reference: str, accept: tuple[str, ...]
    ) -> ManifestHead | None:
        """What ``reference`` resolves to upstream (no body), or None when it does not exist."""
        async with self._request(
            "HEAD", repo, f"manifests/{reference}", headers={"Accept": ", ".join(accept)}
        ) as resp:
            if resp.status == 404:
                return None
            self._expect_ok(resp)
            return ManifestHead(
                digest=resp.headers.get("Docker-Content-Digest"),
                media_type=_media_type(resp),
                size=resp.content_length,
            )

    async def get_manifest(
        self, repo: str, reference: str, accept: tuple[str, ...]
    ) -> ManifestBody | None:
        """The manifest's bytes as the upstream sent them, or None when it does not exist."""
        async with self._request(
            "GET", repo, f"manifests/{reference}", headers={"Accept": ", ".join(accept)}
        ) as resp:
            if resp.status == 404:
                return None
            self._expect_ok(resp)
            if (resp.content_length or 0) > MAX_MANIFEST_SIZE:
                raise UpstreamInvalid(f"upstream {self.name} sent a manifest over 4 MiB")
            try:
                body = await read_capped(resp, MAX_MANIFEST_SIZE + 1)
            except NETWORK_ERRORS as exc:
                raise self.unavailable(exc) from exc
            if len(body) > MAX_MANIFEST_SIZE:
                raise UpstreamInvalid(f"upstream {self.name} sent a manifest over 4 MiB")
            return ManifestBody(body, _media_type(resp), resp.headers.get("Docker-Content-Digest"))

    async def referrers(self, repo: str, digest: str) -> bytes | None:
        """The upstream's referrers index for ``digest`` (OCI distribution 1.1), as sent;
        None when it answers 404: it lacks the API (clients then use the tag scheme)."""
        async with self._request(
            "GET", repo, f"referrers/{digest}", headers={"Accept": OCI_INDEX}
        ) as resp:
            if resp.status == 404:
                return None
            self._expect_ok(resp)
            try:
                body = await read_capped(resp, MAX_MANIFEST_SIZE + 1)
            except NETWORK_ERRORS as exc:
                raise self.unavailable(exc) from exc
            if len(body) > MAX_MANIFEST_SIZE:
                raise UpstreamInvalid(f"upstream {self.name} sent a referrers list over 4 MiB")
            return body

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size if the upstream has it in ``repo``, else None. Downloads nothing."""
        async with self._request("HEAD", repo, f"blobs/{digest}") as resp:
            if resp.status == 404:
                return None
            self._expect_ok(resp)
            self._expect_blob_head(resp, digest)
            return resp.content_length if resp.content_length is not None else -1

    @asynccontextmanager
    async def blob(
        self, repo: str, digest: str, offset: int = 0
    ) -> AsyncIterator[BlobStream | None]:
        """The blob's body from ``offset`` on (a Range request when offset > 0), or None on
        404. The caller holds a ``download_slot``."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = f"{self.base}/v2/{repo}/blobs/{digest}"
        with self._using():
            resp = await self._send_authed(
                self._wire_exchange, "GET", url, f"repository:{repo}:pull", headers, None
            )
            try:
                if resp.status == 404:
                    yield None
                    return
                self._expect_ok(resp)
                if offset and resp.status != 206:
                    raise UpstreamUnavailable(
                        f"upstream {self.name} ignored a Range request for {digest}; cannot resume"
                    )
                yield BlobStream(resp, offset, _total_size(resp, offset))
            finally:
                resp.release()

    async def tags(
        self, repo: str, n: int | None, last: str | None
    ) -> tuple[list[str], bool] | None:
        """One page of the upstream's tag list and whether more follow; None when the
        repository does not exist upstream."""
        params: dict[str, str] = {}
        if n is not None:
            params["n"] = str(n)
        if last:
            params["last"] = last
        async with self._request("GET", repo, "tags/list", params=params) as resp:
            if resp.status == 404:
                return None
            self._expect_ok(resp)
            try:
                doc = json.loads(await read_capped(resp, 16 * 1024 * 1024))
            except NETWORK_ERRORS as exc:
                raise self.unavailable(exc) from exc
            except ValueError as exc:
                raise UpstreamInvalid(f"upstream {self.name} sent an unreadable tag list") from exc
            tags = doc.get("tags") if isinstance(doc, dict) else None
            if not isinstance(tags, list):
                tags = []
            return [t for t in tags if isinstance(t, str)], "next" in resp.links

    # --- the request path --------------------------------------------------------------

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        repo: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request for metadata (not a blob body): holds a metadata slot while it runs."""
        scope = f"repository:{repo}:pull"
        url = f"{self.base}/v2/{repo}/{path}"
        with self._using():
            async with self._metadata_slot():
                resp = await self._send_authed(
                    self._aiohttp_exchange, method, url, scope, headers or {}, params
                )
                try:
                    yield resp
                except NETWORK_ERRORS as exc:
                    raise self.unavailable(exc) from exc
                finally:
                    resp.release()

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        """Count a request (and the body it streams) as under way while it runs."""
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self.last_active = self._clock()

    async def _aiohttp_exchange(
        self, method: str, url: str, headers: CIMultiDict[str], params: dict[str, str] | None
    ) -> aiohttp.ClientResponse:
        return await self.session.request(
            method, url, headers=headers, params=params, allow_redirects=False
        )

    async def _wire_exchange(
        self, method: str, url: str, headers: CIMultiDict[str], params: dict[str, str] | None
    ) -> WireResponse:
        return await self.wire.request(method, url, headers=headers, params=params)

    @asynccontextmanager
    async def _metadata_slot(self) -> AsyncIterator[None]:
        try:
            async with self._metadata.hold(self.config.connect_timeout):
                yield
        except NoSlot:
            raise self._busy(
                "metadata",
                f"upstream {self.name}: all {self._metadata.size} of the mirror's requests "
                "for manifests to it are busy; try again shortly",
            ) from None

    async def _send_authed(
        self,
        exchange: Exchange[A],
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
    ) -> A:
        if self.offline:
            # Before the breaker and the token cache: an offline upstream is not down, and
            # nothing (not even a token request) may reach it.
            raise UpstreamUnavailable(
                f"upstream {self.name} is offline (switched off by the operator): only "
                "content cached before is served, and this is not cached"
            )
        self._check_not_throttled()
        ticket = await self._admit()
        try:
            return await self._send_authed_admitted(
                exchange, method, url, scope, headers, params, ticket
            )
        finally:
            self.breaker.release(ticket)

    async def _admit(self) -> Ticket:
        """Leave to send a request now. While the circuit is open, start the probe (if none
        is running) and give it ``PROBE_PATIENCE`` to find the upstream back; if it has
        not, fail at once with 503 (cached content is served by the caller meanwhile)."""
        ticket = self.breaker.admit()
        if ticket is not None and ticket.probe:
            self._probing = asyncio.get_running_loop().create_task(self._probe(ticket))
        elif ticket is not None:
            return ticket
        if self._probing is not None and not self._probing.done():
            await asyncio.wait({self._probing}, timeout=PROBE_PATIENCE)  # never cancels it
        ticket = self.breaker.admit()
        if ticket is not None and not ticket.probe:
            return ticket
        if ticket is not None:
            self.breaker.release(ticket)  # the probe just failed: the next request probes
        self.metrics.upstream_refused.labels(self.name, "circuit_open").inc()
        raise self.failed(
            UpstreamUnavailable(
                f"upstream {self.name} could not be reached moments ago "
                f"({self.last_error or 'no answer'}); trying again with the next request",
                headers={"Retry-After": "1"},
            ),
            remember=False,
        )

    async def _probe(self, ticket: Ticket) -> None:
        """One ``GET /v2/`` with no retry: any answer means the upstream is reachable."""
        try:
            url = f"{self.base}/v2/"
            self.outbound.check_url(url, "upstream")
            async with self.session.get(url, allow_redirects=False):
                self.breaker.succeeded()
            log.info("upstream %s answers again", self.name)
        except _UNREACHABLE as exc:
            self.breaker.failed(ticket)
            log.debug("upstream %s: probe: %s", self.name, exc)
        except Exception as exc:  # no verdict (policy, a broken answer): next request probes
            log.debug("upstream %s: probe ended without a verdict: %s", self.name, exc)
        finally:
            self.breaker.release(ticket)

    async def _send_authed_admitted(
        self,
        exchange: Exchange[A],
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
        ticket: Ticket,
    ) -> A:
        for attempt in range(2):
            auth = self.auth.header(scope)
            resp = await self._send(exchange, method, url, headers, params, auth, ticket)
            if resp.status != 401:
                self.rate_limit.note(resp.headers)
                if resp.status < 500:
                    self.last_ok = time.time()
                return resp
            resp.release()
            if _origin(str(resp.url)) != _origin(self.base):
                # A redirect target (a CDN) asking for credentials: its realm is not the
                # upstream's, so neither the credentials nor a token made with them go there.
                raise self.failed(
                    UpstreamInvalid(
                        f"upstream {self.name} redirected to {origin_of(str(resp.url))}, "
                        "which asked for credentials; pullthrough gives the upstream's "
                        "credentials only to the upstream and the token realm it names"
                    )
                )
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if attempt == 1 or challenge is None:
                break
            await self.auth.answer(challenge, scope, had_auth=auth is not None)
        hint = (
            "the upstream rejected the configured proxy.username/proxy.password"
            if self.config.username
            else "the upstream requires credentials: set proxy.username and proxy.password"
        )
        raise Unauthorized(f"upstream {self.name} refused the mirror: {hint}")

    async def _send(
        self,
        exchange: Exchange[A],
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
        auth: str | None,
        ticket: Ticket,
    ) -> A:
        """Send, following redirects here (the client never sees a CDN redirect).
        Authorization goes only to the upstream's own origin."""
        origin = _origin(self.base)
        what = "upstream"
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self.outbound.check_url(url, what)
            except OutboundRefused as exc:
                raise self.failed(OutboundRefused(f"upstream {self.name}: {exc.message}")) from None
            hdrs = CIMultiDict(headers)
            if auth and _origin(url) == origin:
                hdrs["Authorization"] = auth
            resp = await self._request_with_retry(exchange, method, url, hdrs, params, ticket)
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                params = None  # the Location carries its own query
                what = "redirect target"
                resp.release()
                continue
            return resp
        raise self.failed(
            OutboundRefused(f"upstream {self.name}: more than {MAX_REDIRECTS} redirects; refused")
        )

    async def _request_with_retry(
        self,
        exchange: Exchange[A],
        method: str,
        url: str,
        headers: CIMultiDict[str],
        params: dict[str, str] | None,
        ticket: Ticket,
    ) -> A:
        """One request; connection-level failures (refused, reset, a pooled connection the
        upstream had closed) are retried with a short back-off. Time-outs are not: they
        already cost the configured time, and a client is waiting. The upstream's own
        origin answering, or not being reachable after the retries, is what the circuit
        breaker hears (a redirect target's failures are not the upstream being down)."""
        own = _origin(url) == _origin(self.base)
        for attempt, backoff in enumerate((*CONNECT_RETRY_BACKOFF, None)):
            sent = time.perf_counter()
            try:
                resp = await exchange(method, url, headers, params)
            except OutboundRefused as exc:  # from PolicyResolver: nothing was connected to
                raise self.failed(OutboundRefused(f"upstream {self.name}: {exc.message}")) from None
            except (aiohttp.ClientConnectionError, ConnectionError) as exc:
                if backoff is None or isinstance(exc, aiohttp.ServerTimeoutError):
                    if own and isinstance(exc, _UNREACHABLE):
                        self.breaker.failed(ticket)
                    raise self.unavailable(exc) from exc
                log.debug("upstream %s: %s; retry %d", self.name, exc, attempt + 1)
                await asyncio.sleep(backoff)
            except NETWORK_ERRORS as exc:
                raise self.unavailable(exc) from exc
            else:
                if own:
                    self.breaker.succeeded()
                    self.latency.note(time.perf_counter() - sent)
                return resp
        raise AssertionError("unreachable")  # pragma: no cover

    # --- error mapping -----------------------------------------------------------------

    def _expect_blob_head(self, resp: aiohttp.ClientResponse, digest: str) -> None:
        """A HEAD's 200 vouches for the blob only if it is about that blob: a size from a
        page (an HTML 200 from a captive portal or a misrouted proxy) or a digest header
        naming another blob would be passed on to clients as the blob's size."""
        named = resp.headers.get("Docker-Content-Digest")
        page = resp.content_type.startswith("text/html")
        if (named is not None and named != digest) or (named is None and page):
            what = f"names {named}" if named is not None else "is an HTML page"
            raise self.failed(
                UpstreamInvalid(
                    f"upstream {self.name} answered a HEAD of blob {digest} with a 200 that {what}"
                )
            )

    def _expect_ok(self, resp: Answer) -> None:
        if resp.status < 300:
            return
        if resp.status == 429:
            raise self.too_many(resp)
        if resp.status == 403:
            raise self.failed(Denied(f"upstream {self.name} denied access (403)"))
        if resp.status >= 500:
            raise self.failed(UpstreamUnavailable(f"upstream {self.name} answered {resp.status}"))
        raise self.failed(
            UpstreamInvalid(f"upstream {self.name} answered {resp.status} unexpectedly")
        )

    def failed(self, error: E, *, remember: bool = True) -> E:
        """Count (and remember) an upstream failure on its way to the caller.
        (This and the two below are shared with the auth flow in ``upstream.tokens``.)"""
        self.metrics.upstream_errors.labels(self.name, error.code).inc()
        if remember:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.last_error = f"{stamp} {error.message}"
        return error

    def too_many(self, resp: Answer) -> TooManyRequests:
        wait = self.rate_limit.throttle(resp.headers)
        return self.failed(
            TooManyRequests(
                f"upstream {self.name} is rate-limiting the mirror (429); nothing cached can "
                "answer",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        )

    def _busy(self, lane: str, message: str) -> UpstreamUnavailable:
        """The mirror's own limit was reached (not the upstream failing): 503, come back."""
        self.metrics.upstream_refused.labels(self.name, lane).inc()
        return self.failed(
            UpstreamUnavailable(message, headers={"Retry-After": str(BUSY_RETRY_AFTER)}),
            remember=False,
        )

    def _check_not_throttled(self) -> None:
        wait = self.rate_limit.wait_left()
        if wait > 0:
            raise TooManyRequests(
                f"upstream {self.name} is rate-limiting the mirror; not asking it again for "
                f"{wait:.0f} s and nothing cached can answer",
                headers={"Retry-After": str(max(1, round(wait)))},
            )

    def unavailable(self, exc: BaseException) -> UpstreamUnavailable:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            reason = "timed out"
        return self.failed(
            UpstreamUnavailable(f"upstream {self.name} could not be reached: {reason}")
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _media_type(resp: aiohttp.ClientResponse) -> str | None:
    value = resp.headers.get("Content-Type")
    return value.split(";", 1)[0].strip() if value else None


def _total_size(resp: Answer, offset: int) -> int | None:
    if resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        return int(total) if total.isascii() and total.isdigit() else None
    if resp.content_length is not None:
        return offset + resp.content_length
    return None
