"""Value parsers shared by every config key: durations, addresses, URLs, sizes."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pullthrough.config.redact import shown


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key."""


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a Go duration (``168h``, ``1h30m``, ``500ms``) or a number of seconds.

    Go reads a bare integer as nanoseconds; in practice people mean seconds (``0`` is the
    only bare number distribution's docs show), so we take bare numbers as seconds.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 168h or 30s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", body):
            seconds = sign * float(body)
        elif body and "".join(m.group(0) for m in _DURATION_PART.finditer(body)) == body:
            seconds = sign * sum(
                float(m.group(1)) * _UNIT_SECONDS[m.group(2)] for m in _DURATION_PART.finditer(body)
            )
        else:
            raise ConfigError(f"{key}: expected a duration like 168h or 30s, got {value!r}")
    else:
        raise ConfigError(f"{key}: expected a duration like 168h or 30s, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative, got {value!r}")
    return seconds


def parse_addr(value: str, key: str) -> tuple[str, int]:
    """``:5000`` → (``0.0.0.0``, 5000); ``127.0.0.1:5000``; ``[::1]:5000``."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):([0-9]{1,5})", text)
    if not match:
        # shown(): a Redis URL such as redis://:password@host put in an addr key.
        raise ConfigError(f"{key}: expected host:port such as :5000, got {shown(value)}")
    host = match.group(1) or match.group(2) or "0.0.0.0"
    port = int(match.group(3))
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range")
    return host, port


def check_url(value: str, key: str) -> str:
    """``value`` without a trailing slash, if it is an http(s) URL with a host and no
    ``user:password@`` (which would be shown wherever the URL is: ``pullthrough check``,
    ``/debug/health``, logs); credentials belong in their own keys."""
    parts = urlsplit(value.strip())
    if "@" in parts.netloc:
        raise ConfigError(
            f"{key}: credentials in the URL (user:password@host) are not accepted; give "
            "the bare URL and set username and password beside it (the value is not shown)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{key}: expected an http(s) URL such as https://registry-1.docker.io, "
            f"got {shown(value)}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{key}: bad port in URL {shown(value)}") from exc
    return value.strip().rstrip("/")


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}


def parse_size(value: Any, key: str) -> int:
    """Bytes from ``50GiB``, ``500MB``, ``1.5TiB`` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 50GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"{key}: expected a size like 50GiB or 80%, got {value!r}")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    prefix = unit[:1] if unit not in ("", "b") else ""
    scale = 1024 ** "kmgtp".index(prefix) * 1024 if binary and prefix else _SIZE_UNITS[prefix]
    return int(number * scale)


def parse_rate(value: Any, key: str) -> int:
    """Bytes per second from ``50MB/s`` or ``1MiB/s`` (``/s`` may be left out), or a bare
    number of bytes per second; 0 is allowed (off)."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{key}: expected a rate like 50MB/s (0 = off), got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        return int(value)
    text = str(value).strip()
    if text.lower().endswith("/s"):
        text = text[:-2]
    if not _SIZE.match(text):
        raise ConfigError(f"{key}: expected a rate like 50MB/s (0 = off), got {value!r}")
    return parse_size(text, key)
