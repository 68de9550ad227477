"""The client side of registry auth, as registry clients do it: Basic credentials, or a
Bearer challenge answered with a token from the realm (Docker's token protocol)."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping

from .net import Headers, HTTPResponse, http_request


def _split_scopes(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(s for v in values for s in v.split(" ") if s)


_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` value into ``(scheme, params)``.

    ``'Bearer realm="http://x/token",service="s",scope="repository:a:pull"'`` gives
    ``("bearer", {"realm": ..., "service": ..., "scope": ...})``; the scheme is
    lower-cased, parameter names too; ``("", {})`` for ``None`` or empty.
    """
    if not header:
        return "", {}
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "").replace(
            '\\"', '"'
        )
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def fetch_token(
    realm: str,
    *,
    service: str | None = None,
    scopes: Iterable[str] = (),
    creds: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    """``GET realm?service=..&scope=..`` (Basic ``creds`` if given); returns the token.

    Raises ``TokenError`` (with status and body) on any non-200 answer.
    """
    query: list[tuple[str, str]] = []
    if service is not None:
        query.append(("service", service))
    query += [("scope", s) for s in scopes]
    url = realm + ("?" + urllib.parse.urlencode(query) if query else "")
    resp = http_request("GET", url, auth=creds, timeout=timeout)
    if resp.status != 200:
        raise TokenError(resp.status, resp.body)
    doc = json.loads(resp.body)
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str):
        raise TokenError(resp.status, resp.body)
    return token


class TokenError(RuntimeError):
    """The token endpoint did not hand out a token."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"token endpoint answered {status}: {body[:300]!r}")
        self.status = status
        self.body = body


def bearer_request(
    method: str,
    url: str,
    *,
    headers: Headers | None = None,
    data: bytes | None = None,
    creds: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> HTTPResponse:
    """Send a request the way a registry client does under token auth.

    Sends Basic ``creds`` if given (a registry with htpasswd takes them as they are);
    on a ``401`` with a ``Bearer`` challenge, fetches a token from its realm (service
    and scope from the challenge, Basic ``creds`` if given) and retries once with
    ``Authorization: Bearer``. Any other answer (including a 401 to the retry, or a
    ``TokenError`` from the realm) is returned or raised as-is. No token caching.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    first = http_request(method, url, headers=pairs, data=data, auth=creds, timeout=timeout)
    scheme, params = parse_challenge(first.header("WWW-Authenticate"))
    if first.status != 401 or scheme != "bearer" or "realm" not in params:
        return first
    token = fetch_token(
        params["realm"],
        service=params.get("service"),
        scopes=_split_scopes([params.get("scope", "")]),
        creds=creds,
        timeout=timeout,
    )
    return http_request(
        method,
        url,
        headers=[*pairs, ("Authorization", f"Bearer {token}")],
        data=data,
        timeout=timeout,
    )
