"""Registry errors as one replica tells them to another through Redis, so that the
clients of every replica get the error the upstream gave the one that asked it.

What Redis holds is untrusted: an error read back becomes an error class of this module's
choosing, with a bounded, printable message, a small detail and no header but a numeric
``Retry-After`` (nothing a record could use to set other headers on a client's answer).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pullthrough.errors import RegistryError, UpstreamUnavailable

MAX_MESSAGE = 1000
MAX_DETAIL = 2000
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_SECONDS = re.compile(r"[0-9]{1,6}")
FALLBACK = "another replica's fetch failed"


def error_to_json(error: RegistryError) -> dict[str, Any]:
    return {
        "code": error.code,
        "message": error.message,
        "detail": error.detail,
        "headers": error.headers,
    }


def error_from_json(doc: Any) -> RegistryError:
    """The error ``error_to_json`` described, as its own class (so that, for example,
    a TooManyRequests still makes a tag be served stale); UpstreamUnavailable if unknown
    or malformed."""
    if not isinstance(doc, dict):
        return UpstreamUnavailable(FALLBACK)
    kind = _by_code().get(str(doc.get("code")), UpstreamUnavailable)
    message = doc.get("message")
    if not isinstance(message, str) or not message:
        message = FALLBACK
    # Printable and bounded: it reaches the log and the client's error body.
    message = _UNPRINTABLE.sub("?", message[:MAX_MESSAGE])
    detail = doc.get("detail")
    try:
        if len(json.dumps(detail)) > MAX_DETAIL:
            detail = None
    except (TypeError, ValueError, RecursionError):
        detail = None
    headers = doc.get("headers")
    retry = headers.get("Retry-After") if isinstance(headers, dict) else None
    kept = {"Retry-After": retry} if isinstance(retry, str) and _SECONDS.fullmatch(retry) else None
    return kind(message, detail=detail, headers=kept)


def _by_code() -> dict[str, type[RegistryError]]:
    found: dict[str, type[RegistryError]] = {}
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        kind = pending.pop()
        found.setdefault(kind.code, kind)
        pending.extend(kind.__subclasses__())
    return found
