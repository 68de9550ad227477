"""Registry errors as one replica tells them to another through Redis, so that the
clients of every replica get the error the upstream gave the one that asked it."""

from __future__ import annotations

from typing import Any

from pullthrough.errors import RegistryError, UpstreamUnavailable


def error_to_json(error: RegistryError) -> dict[str, Any]:
    return {
        "code": error.code,
        "message": error.message,
        "detail": error.detail,
        "headers": error.headers,
    }


def error_from_json(doc: Any) -> RegistryError:
    """The error ``error_to_json`` described, as its own class (so that, for example,
    a TooManyRequests still makes a tag be served stale); UpstreamUnavailable if unknown."""
    if not isinstance(doc, dict):
        return UpstreamUnavailable("another replica's fetch failed")
    kind = _by_code().get(str(doc.get("code")), UpstreamUnavailable)
    headers = doc.get("headers")
    return kind(
        str(doc.get("message") or "another replica's fetch failed"),
        detail=doc.get("detail"),
        headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None,
    )


def _by_code() -> dict[str, type[RegistryError]]:
    found: dict[str, type[RegistryError]] = {}
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        kind = pending.pop()
        found.setdefault(kind.code, kind)
        pending.extend(kind.__subclasses__())
    return found
