"""A Docker-Hub-style token server (the "realm" of registry token auth) for tests.

``TokenIssuer`` runs a small aiohttp app on a loopback address in a background
thread (own event loop: a ``servers.ThreadedApp``, like ``proxy.RecordingProxy``). It implements
the Docker registry token protocol (``GET /token?service=..&scope=..``, plus the
OAuth2 ``POST /token`` password grant) and signs RS256 JWTs that a real
``docker-registry`` 2.8 configured with ``auth.token`` accepts:

* at first ``start()`` it generates an RSA key and a self-signed CA certificate
  for it and writes the certificate PEM to ``cert_path``: that file is the
  registry's ``auth.token.rootcertbundle``;
* every JWT header names its signing key. distribution 2.8
  (``registry/auth/token/token.go``, ``VerifySigningKey``) tries, in order, an
  ``x5c`` certificate chain (verified against the root bundle), a ``jwk``, then a
  ``kid`` looked up among the bundle's public keys by their *libtrust* key ID.
  ``key_header="x5c"`` (default) sends the certificate itself as a one-element
  chain; ``key_header="kid"`` sends the libtrust key ID of the public key.

Policy (Docker Hub-like, deliberately simple):

* anonymous clients get ``pull`` on every repository not in ``private``;
* an authenticated client (valid Basic credentials from ``users``) gets every
  action it asks for on every repository (``pull``, ``push``, ``delete``, ``*``);
* actions that are not granted are left out of the token; a repository with
  nothing granted is left out of ``access`` entirely (an anonymous request for a
  private repository gets a valid token with ``"access": []``, as Docker Hub
  answers for private or missing repositories), so the registry refuses it;
* wrong Basic credentials (unknown user or bad password) get ``401``;
* scopes of other resource types (e.g. ``registry:catalog:*``) are never granted.

This module also has small client helpers for the token flow
(``parse_challenge``, ``fetch_token``, ``bearer_request``) for tests that talk to a
token-protected registry directly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .net import LOOPBACK
from .regclient import TokenError, bearer_request, fetch_token, parse_challenge
from .servers import Records, ThreadedApp

DEFAULT_SERVICE = "pullthrough-test-registry"
DEFAULT_ISSUER = "pullthrough-test-token-issuer"

REGISTRY_LEEWAY = 60.0
"""Seconds of clock-skew leeway distribution 2.8 allows on ``exp`` and ``nbf``.

A token stays usable at the registry until ``exp + 60 s``; see
``TokenIssuer.clock_skew`` to make a token that expires at the registry soon.
"""

KeyHeader = Literal["x5c", "kid"]


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint, as the issuer saw it.

    ``user`` is the user name from a Basic ``Authorization`` header (or the
    ``username`` form field of a POST), whether or not the password was right;
    ``authenticated`` tells whether it was. ``authorization`` is true when *any*
    ``Authorization`` header was sent. ``scopes`` are the raw scope strings asked
    for, in order (a space-separated ``scope`` value is split). ``granted`` are the
    scopes put into the token, as ``type:name:action[,action]`` strings, and is
    empty when no token was issued. ``status`` is the HTTP status answered.
    """

    time: float
    method: str
    user: str | None
    authorization: bool
    authenticated: bool
    scopes: tuple[str, ...]
    service: str | None
    status: int
    granted: tuple[str, ...] = ()
    account: str | None = None
    query: str = field(default="", repr=False)

    def asked(self, scope_contains: str) -> bool:
        """True if any requested scope contains ``scope_contains``."""
        return any(scope_contains in s for s in self.scopes)


@dataclass(frozen=True)
class Scope:
    """A parsed ``type:name:actions`` scope; ``name`` may itself contain ``:``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """Parse one scope string; ``None`` if it has fewer than three parts."""
        head, sep, actions = text.rpartition(":")
        rtype, sep2, name = head.partition(":")
        if not sep or not sep2 or not rtype or not name:
            return None
        # "repository(plugin)" style resource classes: keep only the type.
        rtype = rtype.split("(", 1)[0]
        return cls(rtype, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


# ---------------------------------------------------------------------------- keys


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The libtrust fingerprint distribution 2.8 uses as a JWT ``kid``.

    SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32, in twelve
    ``:``-separated groups of four characters.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _make_key_and_cert(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _split_scopes(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(s for v in values for s in v.split(" ") if s)


# ---------------------------------------------------------------------------- server


class TokenIssuer(ThreadedApp):
    """Token server on ``http://<host>:<port>/token`` signing JWTs for one registry service.

    Addressing (valid after ``start()``): ``url`` is the realm (``.../token``),
    ``base_url``/``port``/``host`` the server. ``service`` and ``issuer`` are the
    values the registry must be configured with (``aud`` and ``iss`` of every
    token); ``cert_path`` is its ``rootcertbundle``. ``host`` may be any loopback
    address (e.g. ``"127.0.0.2"``) to put the realm "on another host" than the
    registry.

    Policy knobs, safe to change from the test thread at any time (assign a new
    value or mutate in place); each request takes one snapshot of them:

    * ``users``: ``{user: password}`` accepted as Basic credentials;
    * ``private``: repository names only authenticated users may pull;
    * ``expires_in``: token lifetime in seconds (``exp - iat``);
    * ``clock_skew``: seconds added to the issuer's clock when stamping
      ``iat``/``nbf``/``exp``/``issued_at`` (a token server with a wrong clock);
    * ``fail_status``: if set, every token request is answered with this status;
    * ``stall_seconds``: sleep this long before answering each token request.

    Every request to ``/token`` is recorded (see ``TokenRequest``), including
    refused and failed ones. The key and certificate are made on the first
    ``start()`` and kept for the object's life, so tokens survive ``stop()`` /
    ``start()`` and the port is reused.
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        users: Mapping[str, str] | None = None,
        private: Iterable[str] = (),
        expires_in: int = 300,
        key_header: KeyHeader = "x5c",
        root: Path | str | None = None,
    ) -> None:
        if not host.startswith("127."):
            raise ValueError(f"TokenIssuer only binds loopback addresses, not {host!r}")
        super().__init__(address=host, port=port)
        self.service = service
        self.issuer = issuer
        self.users: dict[str, str] = dict(users or {})
        self.private: set[str] = set(private)
        self.expires_in: int = expires_in
        self.clock_skew: float = 0.0
        self.fail_status: int | None = None
        self.stall_seconds: float = 0.0
        self.key_header: KeyHeader = key_header
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="token-issuer-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.root / "token-root.pem"
        self._key: rsa.RSAPrivateKey | None = None
        self._cert: x509.Certificate | None = None
        self._key_id = ""
        self._x5c: list[str] = []
        self._log: Records[TokenRequest] = Records()

    # ------------------------------------------------------------------ addressing
    @property
    def url(self) -> str:
        """The realm: ``http://<host>:<port>/token``."""
        return f"{self.base_url}/token"

    @property
    def key_id(self) -> str:
        """libtrust key ID of the signing key (valid after ``start()``)."""
        if not self._key_id:
            raise RuntimeError("token issuer not started")
        return self._key_id

    def first_user(self) -> tuple[str, str] | None:
        """``(user, password)`` of the first entry of ``users`` (insertion order), or None."""
        users = dict(self.users)
        for user, password in users.items():
            return user, password
        return None

    def registry_config(self) -> dict[str, str]:
        """The ``auth.token`` section for a distribution config (needs ``start()`` first)."""
        return {
            "realm": self.url,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.cert_path),
        }

    # ------------------------------------------------------------------ records
    def requests(
        self, scope_contains: str | None = None, *, status: int | None = None
    ) -> list[TokenRequest]:
        """Snapshot of recorded token requests, oldest first, optionally filtered.

        ``scope_contains`` keeps requests where any asked scope contains it.
        """
        return [
            r
            for r in self._log.snapshot()
            if (scope_contains is None or r.asked(scope_contains))
            and (status is None or r.status == status)
        ]

    def count(self, scope_contains: str | None = None, *, status: int | None = None) -> int:
        """Number of recorded token requests matching the filters."""
        return len(self.requests(scope_contains, status=status))

    def reset(self) -> None:
        """Forget recorded requests (policy knobs are kept)."""
        self._log.clear()

    # ------------------------------------------------------------------ tokens
    def _ensure_key(self) -> None:
        if self._key is not None:
            return
        key, cert = _make_key_and_cert(self.issuer)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key, self._cert = key, cert
        self._key_id = libtrust_key_id(key.public_key())
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]

    def grant(self, scopes: Iterable[str], user: str | None) -> list[Scope]:
        """What the policy grants ``user`` (``None`` = anonymous) for ``scopes``.

        Repeated scopes for one repository are merged; repositories with no granted
        action are left out. Does not check credentials.
        """
        private = set(self.private)
        merged: dict[tuple[str, str], list[str]] = {}
        for text in scopes:
            scope = Scope.parse(text)
            if scope is None or scope.type != "repository":
                continue
            allowed = merged.setdefault((scope.type, scope.name), [])
            for action in scope.actions:
                ok = user is not None or (action == "pull" and scope.name not in private)
                if ok and action not in allowed:
                    allowed.append(action)
        return [Scope(t, n, tuple(a)) for (t, n), a in merged.items() if a]

    def issue_token(
        self,
        access: Iterable[Scope | str],
        *,
        user: str | None = None,
        expires_in: float | None = None,
        now: float | None = None,
    ) -> str:
        """Sign a JWT granting exactly ``access`` (no policy check; issuer must be started).

        ``now`` (epoch seconds; default ``time.time() + clock_skew``) stamps ``iat`` and
        ``nbf``; ``exp = now + expires_in`` (default ``self.expires_in``). ``sub`` is
        ``user`` or ``""`` for anonymous.
        """
        if self._key is None:
            raise RuntimeError("token issuer not started")
        stamp = time.time() + self.clock_skew if now is None else now
        lifetime = self.expires_in if expires_in is None else expires_in
        entries = []
        for item in access:
            scope = Scope.parse(item) if isinstance(item, str) else item
            if scope is None:
                raise ValueError(f"bad scope {item!r}")
            entries.append({"type": scope.type, "name": scope.name, "actions": list(scope.actions)})
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": int(stamp + lifetime),
            "nbf": int(stamp),
            "iat": int(stamp),
            "jti": secrets.token_hex(16),
            "access": entries,
        }
        headers: dict[str, Any] = (
            {"x5c": list(self._x5c)} if self.key_header == "x5c" else {"kid": self._key_id}
        )
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    def decode(self, token: str, *, verify_exp: bool = True) -> dict[str, Any]:
        """Verify ``token`` with this issuer's key (signature, ``aud``, ``iss``); its claims."""
        if self._key is None:
            raise RuntimeError("token issuer not started")
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            audience=self.service,
            issuer=self.issuer,
            options={"verify_exp": verify_exp},
        )
        return claims

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> TokenIssuer:
        """Make the key/cert (first time), bind the port, serve in a daemon thread.

        Idempotent while running; raises on bind failure or if not serving within
        ``timeout`` seconds.
        """
        self._ensure_key()
        return super().start(timeout)

    async def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/token", self._handle)
        app.router.add_route("POST", "/token", self._handle)
        return app

    def cleanup(self) -> None:
        """``stop()``, and delete ``root`` (with the certificate) if this object created it."""
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        where = self.url if self._port else "unbound"
        return f"<TokenIssuer {where} service={self.service!r} records={len(self._log)}>"

    # ------------------------------------------------------------------ request handling
    async def _handle(self, request: web.Request) -> web.Response:
        # One snapshot of the knobs per request.
        users = dict(self.users)
        fail_status = self.fail_status
        stall = self.stall_seconds
        expires_in = self.expires_in
        now = time.time() + self.clock_skew

        header = request.headers.get("Authorization")
        user, password = _basic_credentials(header)
        if request.method == "POST":
            form = await request.post()
            params = {k: str(v) for k, v in form.items()}
            scopes = _split_scopes([params.get("scope", "")])
            grant_type = params.get("grant_type")
            if grant_type == "password":
                user, password = params.get("username"), params.get("password")
        else:
            params = dict(request.query)
            scopes = _split_scopes(request.query.getall("scope", []))
            grant_type = None
        service = params.get("service")
        authenticated = user is not None and password is not None and users.get(user) == password

        def answer(
            status: int, body: dict[str, Any], granted: tuple[str, ...] = ()
        ) -> web.Response:
            self._log.add(
                TokenRequest(
                    time=time.time(),
                    method=request.method,
                    user=user,
                    authorization=header is not None,
                    authenticated=authenticated,
                    scopes=scopes,
                    service=service,
                    status=status,
                    granted=granted,
                    account=params.get("account"),
                    query=request.query_string,
                )
            )
            extra = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else None
            return web.json_response(body, status=status, headers=extra)

        if stall > 0:
            await asyncio.sleep(stall)
        if fail_status is not None:
            return answer(fail_status, {"details": f"injected failure {fail_status}"})
        if request.method == "POST" and grant_type != "password":
            return answer(400, {"error": "unsupported_grant_type"})
        if user is not None and not authenticated:
            return answer(401, {"details": "incorrect username or password"})
        if service is not None and service != self.service:
            return answer(400, {"details": f"unknown service {service!r}"})

        access = self.grant(scopes, user if authenticated else None)
        token = self.issue_token(
            access, user=user if authenticated else None, expires_in=expires_in, now=now
        )
        body = {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": _rfc3339(now),
        }
        return answer(200, body, tuple(str(s) for s in access))


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """``(user, password)`` from a Basic ``Authorization`` header, else ``(None, None)``.

    A Basic header that cannot be decoded yields ``("", None)``: present but invalid.
    """
    if header is None:
        return None, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (user, None)


__all__ = [
    "DEFAULT_ISSUER",
    "DEFAULT_SERVICE",
    "REGISTRY_LEEWAY",
    "Scope",
    "TokenError",
    "TokenIssuer",
    "TokenRequest",
    "bearer_request",
    "fetch_token",
    "libtrust_key_id",
    "parse_challenge",
]
