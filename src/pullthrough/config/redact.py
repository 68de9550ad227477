"""Which config keys hold credentials, and how an error mentions a value without
showing one: config errors end up in terminals, CI logs and support tickets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Key names (the last part of a dotted key) whose value is a credential, in pullthrough's
# sections and in the distribution sections it ignores (storage.s3, redis, http.secret).
_CREDENTIAL_KEYS = {
    "username",
    "password",
    "secret",
    "token",
    "accesskey",
    "secretkey",
    "sessiontoken",
    "credentials",
}


def is_credential(path: Sequence[str | int]) -> bool:
    """Whether the key at ``path`` (``("proxy", "password")``) holds a credential, or lies
    inside one."""
    return any(isinstance(part, str) and part.lower() in _CREDENTIAL_KEYS for part in path)


def shown(value: Any) -> str:
    """``value`` as an error message may quote it. Text with an ``@`` may be a URL with
    ``user:password@`` in it and is left out; a mapping or list is described by its shape,
    since it may hold a credential key (a whole ``mirror.upstreams`` entry, say)."""
    if isinstance(value, dict):
        keys = ", ".join(sorted(str(k) for k in value))
        return f"a mapping with keys {keys}" if keys else "an empty mapping"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    if "@" in str(value):
        return "a value not shown here, as it contains '@' (user:password@ in a URL?)"
    return repr(value)


def validation_message(loc: Sequence[str | int], msg: str, value: Any) -> str:
    """A pydantic error as ``key: what is wrong (got ...)``, naming a credential's key
    but never its value."""
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    if is_credential(loc):
        return (
            f"{key}: {msg} (the value is not shown: it is a credential; "
            "quote it in the YAML file if it looks like a number or true/false)"
        )
    return f"{key}: {msg} (got {shown(value)})"
