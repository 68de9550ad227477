"""How requests to one upstream authenticate: Basic, or Bearer tokens from its realm.

The scheme is learnt from the upstream's first 401 challenge. Tokens are cached per scope
until they expire (one token request per repository per lifetime, not one per blob), and
concurrent requests for the same scope share one token request. Credentials go only to a
realm on the upstream's own registrable domain; every realm passes the outbound policy, and
a realm's redirects are not followed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pullthrough.errors import OutboundRefused, Unauthorized, UpstreamInvalid, UpstreamUnavailable
from pullthrough.singleflight import SingleFlight
from pullthrough.upstream.auth import (
    DEFAULT_TOKEN_LIFETIME,
    Challenge,
    TokenCache,
    basic_header,
    same_registrable_domain,
)
from pullthrough.upstream.bodies import NETWORK_ERRORS, read_capped

if TYPE_CHECKING:
    from pullthrough.upstream.client import UpstreamClient

# A token response is a few KiB; anything past this is refused unread.
MAX_TOKEN_RESPONSE = 1024 * 1024


class UpstreamAuth:
    def __init__(self, client: UpstreamClient) -> None:
        self._client = client
        self._name = client.name
        self._tokens = TokenCache()
        self._flight: SingleFlight[str] = SingleFlight()
        self._scheme: str | None = None  # "basic" or "bearer", learnt from the first challenge
        self.token_requests = 0

    def header(self, scope: str) -> str | None:
        """The Authorization header a request in ``scope`` carries now, if any."""
        if self._scheme == "bearer":
            token = self._tokens.get(scope)
            return f"Bearer {token}" if token else None
        if self._scheme == "basic" and self._client.config.username:
            return basic_header(self._client.config.username, self._client.config.password or "")
        return None

    async def answer(self, challenge: Challenge, scope: str, *, had_auth: bool) -> None:
        """Get what a 401's challenge asks for (a token for ``scope``, or Basic), so the
        request can be retried once; a token that was refused is dropped first."""
        if challenge.scheme == "basic":
            if not self._client.config.username:
                return  # the retry fails the same way and reports that credentials are needed
            self._scheme = "basic"
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise UpstreamInvalid(
                f"upstream {self._name} sent an authentication challenge pullthrough cannot answer"
            )
        self._scheme = "bearer"
        if had_auth:
            self._tokens.drop(scope)  # expired or revoked: fetch a fresh one, once
        await self._flight.do(scope, lambda: self._fetch(challenge.params, scope))

    async def _fetch(self, params: dict[str, str], scope: str) -> str:
        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise UpstreamInvalid(f"upstream {self._name} named an unusable token realm {realm!r}")
        query = {"scope": scope}
        if "service" in params:
            query["service"] = params["service"]
        headers: dict[str, str] = {}
        if self._client.config.username:
            if not same_registrable_domain(realm, self._client.base):
                raise Unauthorized(
                    f"upstream {self._name} sent its token realm {urlsplit(realm).hostname}, "
                    "outside its own domain; pullthrough will not send the configured "
                    "credentials there"
                )
            headers["Authorization"] = basic_header(
                self._client.config.username, self._client.config.password or ""
            )
        try:
            self._client.outbound.check_url(realm, "token realm")
        except OutboundRefused as exc:
            raise self._client.failed(
                OutboundRefused(f"upstream {self._name}: {exc.message}")
            ) from None
        self.token_requests += 1
        try:
            # Not following redirects: a redirect target is not the realm the upstream named.
            async with self._client.session.get(
                realm, params=query, headers=headers, allow_redirects=False
            ) as resp:
                if resp.status in (401, 403):
                    raise Unauthorized(
                        f"upstream {self._name}'s token service refused the configured credentials"
                    )
                if resp.status == 429:
                    raise self._client.too_many(resp)
                if resp.status != 200:
                    raise UpstreamUnavailable(
                        f"upstream {self._name}'s token service answered {resp.status}"
                    )
                raw = await read_capped(resp, MAX_TOKEN_RESPONSE + 1)
            if len(raw) > MAX_TOKEN_RESPONSE:
                raise self._client.failed(
                    UpstreamInvalid(
                        f"upstream {self._name}'s token service sent more than "
                        f"{MAX_TOKEN_RESPONSE} bytes; refused"
                    )
                )
            doc = json.loads(raw)
        except OutboundRefused as exc:  # from the connector's resolver: nothing was sent
            raise self._client.failed(
                OutboundRefused(f"upstream {self._name}: {exc.message}")
            ) from None
        except NETWORK_ERRORS as exc:
            raise self._client.unavailable(exc) from exc
        except ValueError as exc:
            raise UpstreamInvalid(f"upstream {self._name}'s token service sent no JSON") from exc
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamInvalid(f"upstream {self._name}'s token service sent no token")
        expires_in = doc.get("expires_in", DEFAULT_TOKEN_LIFETIME)
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = DEFAULT_TOKEN_LIFETIME
        self._tokens.put(scope, token, float(expires_in))
        return token
