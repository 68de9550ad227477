"""The distribution registry's ``config.yml``, plus our extensions under ``mirror:``.

A config the distribution registry accepts for a proxy starts pullthrough unchanged.
``REGISTRY_<KEY_PATH>`` environment variables override file values as distribution does.
Every bad value raises ConfigError with one line naming the key; unknown keys are warnings.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

log = logging.getLogger(__name__)

DEFAULT_REMOTE = "https://registry-1.docker.io"
DOCKER_HUB_NAME = "docker.io"
DEFAULT_TTL = 168 * 3600.0

# Sections distribution understands that a pull-through cache has no use for: accepted quietly.
_IGNORED_SECTIONS = {
    "loglevel",
    "notifications",
    "redis",
    "health",
    "reporting",
    "middleware",
    "validation",
    "compatibility",
    "catalog",
    "policy",
}
_IGNORED_KEYS = {
    "log": {"fields", "hooks", "reportcaller"},
    "log.accesslog": set(),
    "storage": {"cache", "maintenance", "redirect", "tag", "delete"},
    "http": {
        "secret",
        "headers",
        "debug",
        "draintimeout",
        "host",
        "relativeurls",
        "prefix",
        "http2",
        "h2c",
        "net",
    },
    "http.tls": {"clientcas", "letsencrypt", "minimumtls", "ciphersuites", "clientauth"},
}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """A configuration value that cannot be used; the message names the key."""


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
        if re.fullmatch(r"\d+(?:\.\d+)?", body):
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
    match = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", text)
    if not match:
        raise ConfigError(f"{key}: expected host:port such as :5000, got {value!r}")
    host = match.group(1) or match.group(2) or "0.0.0.0"
    port = int(match.group(3))
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range")
    return host, port


def _check_url(value: str, key: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http(s) URL such as {DEFAULT_REMOTE}, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{key}: bad port in URL {value!r}") from exc
    return value.strip().rstrip("/")


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class _AccessLog(_Section):
    disabled: bool = False


class _Log(_Section):
    level: Literal["panic", "fatal", "error", "warn", "warning", "info", "debug", "trace"] = "info"
    formatter: Literal["text", "json", "logstash"] = "text"
    accesslog: _AccessLog = _AccessLog()

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class _Filesystem(_Section):
    rootdirectory: str = "./data"


class _Storage(_Section):
    filesystem: _Filesystem = _Filesystem()


class _TLS(_Section):
    certificate: str | None = None
    key: str | None = None


class _HTTP(_Section):
    addr: str = ":5000"
    tls: _TLS = _TLS()


class _Proxy(_Section):
    remoteurl: str = DEFAULT_REMOTE
    username: str | None = None
    password: str | None = None
    ttl: Any = None


class _Mirror(_Section):
    upstream_connect_timeout: Any = "5s"
    upstream_read_timeout: Any = "30s"
    tag_freshness: Any = "0s"
    index_path: str | None = None


class _Root(_Section):
    version: str | float = "0.1"
    log: _Log = _Log()
    storage: _Storage = _Storage()
    http: _HTTP = _HTTP()
    proxy: _Proxy = _Proxy()
    auth: dict[str, Any] | None = None
    mirror: _Mirror = _Mirror()


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One remote registry the mirror pulls from."""

    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ttl: float = DEFAULT_TTL
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    tag_freshness: float = 0.0

    @property
    def is_docker_hub(self) -> bool:
        """Docker Hub rules (``alpine`` is ``library/alpine``) apply to the upstream named
        ``docker.io``, which ``proxy:`` is unless configured otherwise."""
        return self.name == DOCKER_HUB_NAME


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the running mirror needs, typed and validated."""

    log_level: str
    log_formatter: str
    accesslog: bool
    root: Path
    index_path: Path
    host: str
    port: int
    tls_certificate: str | None
    tls_key: str | None
    upstream: UpstreamConfig
    auth: dict[str, Any] | None
    warnings: tuple[str, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain HTTP."""
        if not self.tls_certificate:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls_certificate, self.tls_key)
        return ctx


def _known_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> dict[str, tuple[str, ...]]:
    """``HTTP_ADDR`` → ("http", "addr") for every key the schema knows."""
    out: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        out["_".join(path).upper()] = path
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out.update(_known_paths(sub, path))
    return out


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply ``REGISTRY_*`` overrides to ``raw`` in place; returns warnings for unknown ones."""
    known = _known_paths(_Root)
    warnings: list[str] = []
    for var in sorted(environ):
        if not var.startswith("REGISTRY_"):
            continue
        path = known.get(var[len("REGISTRY_") :])
        if path is None:
            warnings.append(f"environment variable {var} names no key pullthrough knows; ignored")
            continue
        try:
            value = yaml.safe_load(environ[var])
        except yaml.YAMLError:
            value = environ[var]
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return warnings


def _unknown_keys(model: BaseModel, path: str = "") -> list[str]:
    found: list[str] = []
    for key in model.model_extra or {}:
        dotted = f"{path}.{key}" if path else key
        if path == "" and key in _IGNORED_SECTIONS:
            continue
        if key in _IGNORED_KEYS.get(path, set()):
            continue
        if path == "storage" and key != "filesystem":
            continue  # other storage drivers are rejected separately, with a clearer message
        found.append(f"unknown key {dotted}: ignored")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found.extend(_unknown_keys(value, f"{path}.{name}" if path else name))
    return found


_STORAGE_DRIVERS = {"s3", "azure", "gcs", "swift", "oss", "inmemory"}


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at ``path`` (or the embedded default when None) and validate it."""
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}".splitlines()[0]) from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    env_warnings = apply_env(raw, os.environ if environ is None else environ)
    return _validate(raw, env_warnings)


def _validate(raw: dict[str, Any], warnings: list[str]) -> Config:
    try:
        root = _Root.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        raise ConfigError(f"{key}: {err['msg']} (got {got!r})") from None
    storage_extra = set(root.storage.model_extra or {}) & _STORAGE_DRIVERS
    if storage_extra:
        other = sorted(storage_extra)[0]
        raise ConfigError(f"storage.{other}: only storage.filesystem is supported by pullthrough")

    remote = _check_url(root.proxy.remoteurl, "proxy.remoteurl")
    ttl = DEFAULT_TTL if root.proxy.ttl is None else parse_duration(root.proxy.ttl, "proxy.ttl")
    if (root.proxy.username is None) != (root.proxy.password is None):
        raise ConfigError("proxy.username: username and password must be given together")
    connect = parse_duration(
        root.mirror.upstream_connect_timeout, "mirror.upstream_connect_timeout"
    )
    read = parse_duration(root.mirror.upstream_read_timeout, "mirror.upstream_read_timeout")
    for key, value in (
        ("mirror.upstream_connect_timeout", connect),
        ("mirror.upstream_read_timeout", read),
    ):
        if value <= 0:
            raise ConfigError(f"{key}: must be greater than zero")
    freshness = parse_duration(root.mirror.tag_freshness, "mirror.tag_freshness")
    host, port = parse_addr(root.http.addr, "http.addr")

    tls = root.http.tls
    if tls.certificate or tls.key:
        if not (tls.certificate and tls.key):
            raise ConfigError("http.tls: certificate and key must be given together")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                tls.certificate, tls.key
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"http.tls.certificate: cannot load {tls.certificate} with key {tls.key}: {exc}"
            ) from None

    rootdir = Path(root.storage.filesystem.rootdirectory)
    if not str(rootdir).strip():
        raise ConfigError("storage.filesystem.rootdirectory: must not be empty")

    warnings = [*warnings, *_unknown_keys(root)]
    if root.auth:
        warnings.append(
            "auth: client authentication is not enforced yet by this version; "
            "anyone who reaches the port can pull"
        )
    upstream = UpstreamConfig(
        name=DOCKER_HUB_NAME,
        url=remote,
        username=root.proxy.username,
        password=root.proxy.password,
        ttl=ttl,
        connect_timeout=connect,
        read_timeout=read,
        tag_freshness=freshness,
    )
    level = {"warn": "warning", "panic": "critical", "fatal": "critical", "trace": "debug"}.get(
        root.log.level, root.log.level
    )
    return Config(
        log_level=level,
        log_formatter=root.log.formatter,
        accesslog=not root.log.accesslog.disabled,
        root=rootdir,
        index_path=Path(root.mirror.index_path) if root.mirror.index_path else rootdir / "index.db",
        host=host,
        port=port,
        tls_certificate=tls.certificate,
        tls_key=tls.key,
        upstream=upstream,
        auth=root.auth,
        warnings=tuple(warnings),
    )
