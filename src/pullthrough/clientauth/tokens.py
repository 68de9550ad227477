"""``auth.token``: JWTs from an external token server, verified as distribution does.

A token is accepted when its signature verifies with a key from ``rootcertbundle`` (named
by a ``kid`` in libtrust's key-ID form, or carried in an ``x5c`` chain whose leaf is, or
is issued by, a bundle certificate), its issuer and audience are the configured ones, it
is within its validity (60 s of leeway, as distribution allows), and its ``access`` claim
grants the action on the repository asked for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

LEEWAY = 60.0
MAX_TOKEN = 64 * 1024  # a JWT larger than this is refused unread

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class TokenRejected(ValueError):
    """The token cannot be used; the message says why (safe to show the client)."""


@dataclass(frozen=True, slots=True)
class Grant:
    subject: str
    access: tuple[tuple[str, str, frozenset[str]], ...]  # (type, name, actions)

    def allows(self, kind: str, name: str, action: str) -> bool:
        return any(
            t == kind and (n == name or n == "*") and (action in a or "*" in a)
            for t, n, a in self.access
        )


def libtrust_key_id(key: _PublicKey) -> str:
    """The key ID distribution 2.x gives a public key: SHA-256 of its DER
    SubjectPublicKeyInfo, first 240 bits, base32, in twelve groups of four."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected("malformed token") from exc


class TokenVerifier:
    def __init__(self, *, issuer: str, service: str, rootcertbundle: Path) -> None:
        self.issuer = issuer
        self.service = service
        self.roots = x509.load_pem_x509_certificates(rootcertbundle.read_bytes())
        if not self.roots:
            raise ValueError(f"{rootcertbundle} holds no certificate")
        self._by_kid = {libtrust_key_id(c.public_key()): c for c in self.roots}  # type: ignore[arg-type]

    def verify(self, token: str, now: float | None = None) -> Grant:
        """The token's grant; raises TokenRejected."""
        if len(token) > MAX_TOKEN:
            raise TokenRejected("token too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("malformed token")
        try:
            header = json.loads(_b64(parts[0]))
            claims = json.loads(_b64(parts[1]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenRejected("malformed token") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenRejected("malformed token")
        key = self._signing_key(header)
        self._check_signature(key, str(header.get("alg", "")), parts)
        self._check_claims(claims, time.time() if now is None else now)
        return Grant(str(claims.get("sub", "")), _access(claims.get("access")))

    def _signing_key(self, header: dict[str, Any]) -> _PublicKey:
        chain = header.get("x5c")
        if isinstance(chain, list) and chain:
            try:
                leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
            except (ValueError, TypeError, binascii.Error) as exc:
                raise TokenRejected("unreadable x5c certificate") from exc
            if not any(self._vouches(root, leaf) for root in self.roots):
                raise TokenRejected("token signed by a certificate not in rootcertbundle")
            return leaf.public_key()  # type: ignore[return-value]
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self._by_kid:
            return self._by_kid[kid].public_key()  # type: ignore[return-value]
        raise TokenRejected("token signed by an unknown key")

    @staticmethod
    def _vouches(root: x509.Certificate, leaf: x509.Certificate) -> bool:
        if leaf == root:
            return True
        try:
            leaf.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    @staticmethod
    def _check_signature(key: _PublicKey, alg: str, parts: list[str]) -> None:
        family, bits = alg[:2], alg[2:]
        algorithm = _HASHES.get(bits)
        signed = f"{parts[0]}.{parts[1]}".encode()
        signature = _b64(parts[2])
        try:
            if family == "RS" and algorithm and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signed, padding.PKCS1v15(), algorithm())
            elif family == "ES" and algorithm and isinstance(key, ec.EllipticCurvePublicKey):
                half = len(signature) // 2
                der = encode_dss_signature(
                    int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
                )
                key.verify(der, signed, ec.ECDSA(algorithm()))
            else:
                raise TokenRejected(f"unsupported token algorithm {alg[:20]!r}")
        except InvalidSignature as exc:
            raise TokenRejected("token signature does not verify") from exc

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        if claims.get("iss") != self.issuer:
            raise TokenRejected("token from another issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.service not in audiences:
            raise TokenRejected("token for another service")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or now > exp + LEEWAY:
            raise TokenRejected("token expired")
        if isinstance(nbf, int | float) and now < nbf - LEEWAY:
            raise TokenRejected("token not valid yet")


def _access(value: Any) -> tuple[tuple[str, str, frozenset[str]], ...]:
    found = []
    for entry in value if isinstance(value, list) else []:
        if not isinstance(entry, dict):
            continue
        actions = entry.get("actions")
        found.append(
            (
                str(entry.get("type", "")),
                str(entry.get("name", "")),
                frozenset(a for a in actions if isinstance(a, str))
                if isinstance(actions, list)
                else frozenset(),
            )
        )
    return tuple(found)
