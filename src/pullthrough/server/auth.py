"""Client authentication: who may pull through this mirror (``auth:`` in the config).

Every request that reaches a route is authorized here before anything is looked up: the
``/v2/`` probe needs valid credentials, a repository request needs the ``pull`` action
on that repository as the mirror resolved it (its route's scope: after ``?ns=``, a path
prefix and ``library/``, with a non-default upstream's name in front), the catalog needs
``registry:catalog:*``. Failures are 401 UNAUTHORIZED with the challenge a client needs to
log in; a client that failed to log in too often lately is answered 429 TOOMANYREQUESTS
with ``Retry-After``. Who the client is (the htpasswd user; None when not authenticated)
is returned for ``mirror.access``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from aiohttp import web

from pullthrough.clientauth.htpasswd import Htpasswd, basic_credentials
from pullthrough.clientauth.throttle import LoginThrottled
from pullthrough.clientauth.tokens import TokenRejected, TokenVerifier
from pullthrough.config import AuthConfig
from pullthrough.errors import TooManyRequests, Unauthorized

# The verified token of a Bearer-authenticated request: the status page lists only the
# repositories its access claims grant ``pull`` on.
GRANT_KEY = "pullthrough.grant"


class ClientAuth(Protocol):
    async def authorize(
        self,
        request: web.Request,
        kind: str,
        name: str | None,
        actions: tuple[str, ...] = ("pull",),
    ) -> str | None:
        """Return who the client is (None: not authenticated) if the request may proceed;
        raise Unauthorized otherwise. ``actions`` on ``name``: pull, unless the request
        pushes or deletes (hosted repositories)."""


class Anonymous:
    async def authorize(
        self,
        request: web.Request,
        kind: str,
        name: str | None,
        actions: tuple[str, ...] = ("pull",),
    ) -> str | None:
        return None


class BasicAuth:
    def __init__(self, realm: str, path: Path) -> None:
        self.realm = realm
        self.htpasswd = Htpasswd(path)

    async def authorize(
        self,
        request: web.Request,
        kind: str,
        name: str | None,
        actions: tuple[str, ...] = ("pull",),
    ) -> str | None:
        creds = basic_credentials(request.headers.get("Authorization"))
        # containers/image sends "Basic Og==" (empty user and password) when it has none:
        # that is no login attempt, and must not count as a failed one.
        anonymous = creds is None or creds == ("", "")
        if creds is not None and not anonymous:
            try:
                if await self.htpasswd.check(*creds, remote=request.remote):
                    return creds[0]
            except LoginThrottled as exc:
                raise TooManyRequests(
                    str(exc), headers={"Retry-After": str(exc.retry_after)}
                ) from None
        message = "authentication required" if anonymous else "wrong user name or password"
        raise Unauthorized(
            message, headers={"WWW-Authenticate": f'Basic realm="{_quote(self.realm)}"'}
        )


class BearerAuth:
    def __init__(self, realm: str, service: str, verifier: TokenVerifier) -> None:
        self.realm = realm
        self.service = service
        self.verifier = verifier

    async def authorize(
        self,
        request: web.Request,
        kind: str,
        name: str | None,
        actions: tuple[str, ...] = ("pull",),
    ) -> str | None:
        if kind == "catalog":
            scope: tuple[str, str, str] | None = ("registry", "catalog", "*")
        elif name is not None:
            scope = ("repository", name, ",".join(actions))
        else:
            scope = None
        header = request.headers.get("Authorization", "")
        if header[:7].lower() != "bearer ":
            raise self._challenge(scope, None, "authentication required")
        try:
            grant = self.verifier.verify(header[7:].strip())
        except TokenRejected as exc:
            raise self._challenge(scope, "invalid_token", str(exc)) from None
        if scope is not None and not all(
            grant.allows(scope[0], scope[1], action) for action in scope[2].split(",")
        ):
            raise self._challenge(
                scope, "insufficient_scope", f"the token does not grant {':'.join(scope)}"
            )
        request[GRANT_KEY] = grant
        return grant.subject

    def _challenge(
        self, scope: tuple[str, str, str] | None, error: str | None, message: str
    ) -> Unauthorized:
        value = f'Bearer realm="{_quote(self.realm)}",service="{_quote(self.service)}"'
        if scope is not None:
            value += f',scope="{_quote(":".join(scope))}"'
        if error is not None:
            value += f',error="{error}"'
        return Unauthorized(message, headers={"WWW-Authenticate": value})


def build_auth(config: AuthConfig | None) -> ClientAuth:
    if config is None:
        return Anonymous()
    if config.kind == "htpasswd":
        assert config.path is not None
        return BasicAuth(config.realm, config.path)
    assert config.service is not None and config.issuer is not None
    assert config.rootcertbundle is not None
    verifier = TokenVerifier(
        issuer=config.issuer, service=config.service, rootcertbundle=config.rootcertbundle
    )
    return BearerAuth(config.realm, config.service, verifier)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
