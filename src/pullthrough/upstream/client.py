"""One client per remote registry: pooled connections, auth challenges, redirects, time-outs.

Every failure leaves this module as a registry error the mirror can act on:
UpstreamUnavailable (unreachable, timed out, 5xx), TooManyRequests (429, with Retry-After),
Unauthorized/Denied (the upstream refused the mirror's credentials). A 404 is returned as
``None`` by the methods that ask "does it exist": the caller decides what it means.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDict

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
from pullthrough.manifest import MAX_MANIFEST_SIZE
from pullthrough.metrics import Metrics
from pullthrough.upstream.auth import (
    parse_challenge,
)
from pullthrough.upstream.bodies import NETWORK_ERRORS, read_capped
from pullthrough.upstream.outbound import (
    MAX_REDIRECTS,
    Outbound,
    OutboundPolicy,
    PolicyResolver,
    origin_of,
)
from pullthrough.upstream.ratelimit import RateLimit
from pullthrough.upstream.tokens import UpstreamAuth

log = logging.getLogger(__name__)

# Back-off before each retry of a request that failed to connect or lost its connection.
CONNECT_RETRY_BACKOFF = (0.1, 0.4)
# After the upstream could not be reached at all, requests within this many seconds fail
# at once (cached content is served without waiting for retries and time-outs again).
DOWN_FOR = 3.0
# Large reads keep the per-chunk overhead (thread hops, hashing calls) small on big blobs.
READ_BUFSIZE = 1024 * 1024  # 4 MiB cost 35 MiB more RSS under 20 cold streams, no speed

E = TypeVar("E", bound=RegistryError)
# Failures that say the upstream cannot be reached at all (refused, no route, no name,
# connect time-out), as opposed to one slow or broken answer.
_UNREACHABLE = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


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
    """An open upstream blob body starting at ``offset``; ``size`` is the whole blob's."""

    response: aiohttp.ClientResponse
    offset: int
    size: int | None

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.content.iter_any()


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
        self.auth = UpstreamAuth(self)
        self.rate_limit = RateLimit(
            config.name,
            # Created on the first header seen: an unknown quota is absent, not zero.
            on_remaining=lambda n: self.metrics.ratelimit_remaining.labels(config.name).set(n),
        )
        self.last_ok: float | None = None  # time.time() of the last answer below 500
        self._down_until = 0.0  # time.monotonic() before which the upstream is not tried
        self.last_error: str | None = None
        self._clock = clock
        self.in_use = 0  # requests (and the downloads they stream) under way now
        self.last_active = clock()  # when the last of them ended (``clock``'s time)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                read_bufsize=READ_BUFSIZE,
                auto_decompress=False,
                trust_env=False,
                connector=aiohttp.TCPConnector(
                    limit=100,
                    ttl_dns_cache=60,
                    # Names are checked on what they resolve to, when connecting.
                    resolver=PolicyResolver(self.outbound, self._resolver),
                ),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size if the upstream has it in ``repo``, else None. Downloads nothing."""
        async with self._request("HEAD", repo, f"blobs/{digest}") as resp:
            if resp.status == 404:
                return None
            self._expect_ok(resp)
            return resp.content_length if resp.content_length is not None else -1

    @asynccontextmanager
    async def blob(
        self, repo: str, digest: str, offset: int = 0
    ) -> AsyncIterator[BlobStream | None]:
        """The blob's body from ``offset`` on (a Range request when offset > 0), or None on 404."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._request("GET", repo, f"blobs/{digest}", headers=headers) as resp:
            if resp.status == 404:
                yield None
                return
            self._expect_ok(resp)
            if offset and resp.status != 206:
                raise UpstreamUnavailable(
                    f"upstream {self.name} ignored a Range request for {digest}; cannot resume"
                )
            yield BlobStream(resp, offset, _total_size(resp, offset))

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
        scope = f"repository:{repo}:pull"
        url = f"{self.base}/v2/{repo}/{path}"
        self.in_use += 1
        try:
            resp = await self._send_authed(method, url, scope, headers or {}, params)
            try:
                yield resp
            except NETWORK_ERRORS as exc:
                raise self.unavailable(exc) from exc
            finally:
                resp.release()
        finally:
            self.in_use -= 1
            self.last_active = self._clock()

    async def _send_authed(
        self,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
    ) -> aiohttp.ClientResponse:
        self._check_not_throttled()
        if time.monotonic() < self._down_until:
            raise self.failed(
                UpstreamUnavailable(
                    f"upstream {self.name} could not be reached moments ago "
                    f"({self.last_error or 'no answer'}); trying again shortly"
                ),
                remember=False,
            )
        for attempt in range(2):
            auth = self.auth.header(scope)
            resp = await self._send(method, url, headers, params, auth)
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
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
        auth: str | None,
    ) -> aiohttp.ClientResponse:
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
            resp = await self._request_with_retry(method, url, hdrs, params)
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
        self, method: str, url: str, headers: CIMultiDict[str], params: dict[str, str] | None
    ) -> aiohttp.ClientResponse:
        """One request; connection-level failures (refused, reset, a pooled connection the
        upstream had closed) are retried with a short back-off. Time-outs are not: they
        already cost the configured time, and a client is waiting."""
        for attempt, backoff in enumerate((*CONNECT_RETRY_BACKOFF, None)):
            try:
                return await self.session.request(
                    method, url, headers=headers, params=params, allow_redirects=False
                )
            except OutboundRefused as exc:  # from PolicyResolver: nothing was connected to
                raise self.failed(OutboundRefused(f"upstream {self.name}: {exc.message}")) from None
            except (aiohttp.ClientConnectionError, ConnectionError) as exc:
                if backoff is None or isinstance(exc, aiohttp.ServerTimeoutError):
                    if isinstance(exc, _UNREACHABLE):
                        self._down_until = time.monotonic() + DOWN_FOR
                    raise self.unavailable(exc) from exc
                log.debug("upstream %s: %s; retry %d", self.name, exc, attempt + 1)
                await asyncio.sleep(backoff)
            except NETWORK_ERRORS as exc:
                raise self.unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # --- error mapping -----------------------------------------------------------------

    def _expect_ok(self, resp: aiohttp.ClientResponse) -> None:
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

    def too_many(self, resp: aiohttp.ClientResponse) -> TooManyRequests:
        wait = self.rate_limit.throttle(resp.headers)
        return self.failed(
            TooManyRequests(
                f"upstream {self.name} is rate-limiting the mirror (429); nothing cached can "
                "answer",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
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


def _total_size(resp: aiohttp.ClientResponse, offset: int) -> int | None:
    if resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        return int(total) if total.isascii() and total.isdigit() else None
    if resp.content_length is not None:
        return offset + resp.content_length
    return None
