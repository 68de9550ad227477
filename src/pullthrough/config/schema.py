"""The config file's shape: distribution's sections, pydantic-checked, and the
``REGISTRY_*`` environment overrides that address them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from pullthrough.config.model import DEFAULT_REMOTE

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
    "storage": {"cache", "maintenance", "tag"},
    "http": {
        "secret",
        "headers",
        "host",
        "relativeurls",
        "prefix",
        "http2",
        "h2c",
        "net",
    },
    "http.tls": {"letsencrypt", "minimumtls", "ciphersuites", "clientauth"},
}


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


class _Delete(_Section):
    enabled: bool = False


class _S3(_Section):
    """``storage.s3`` as distribution reads it (its S3 driver's parameters); checked, and
    turned into an ``S3Config``, by ``config.s3``."""

    bucket: str | None = None
    region: str | None = None
    regionendpoint: str | None = None
    forcepathstyle: bool | None = None
    accesskey: str | None = None
    secretkey: str | None = None
    sessiontoken: str | None = None
    rootdirectory: str | None = None
    secure: bool = True
    skipverify: bool = False
    v4auth: bool = True
    chunksize: Any = None
    multipartcopychunksize: Any = None
    multipartcopymaxconcurrency: Any = None
    multipartcopythresholdsize: Any = None
    encrypt: bool = False
    keyid: str | None = None
    storageclass: str | None = None
    objectacl: str | None = None
    useragent: str | None = None
    usedualstack: bool = False
    accelerate: bool = False
    loglevel: Any = None


class _Redirect(_Section):
    disable: bool = False


class _Storage(_Section):
    filesystem: _Filesystem = _Filesystem()
    s3: _S3 | None = None
    redirect: _Redirect = _Redirect()  # s3: answer blob GETs with a presigned URL or not
    delete: _Delete = _Delete()  # hosted repositories: may clients delete blobs/manifests


class _TLS(_Section):
    certificate: str | None = None
    key: str | None = None
    clientcas: list[str] = []


class _Prometheus(_Section):
    enabled: bool = False
    path: str = "/metrics"


class _Debug(_Section):
    addr: str | None = None
    prometheus: _Prometheus = _Prometheus()


class _HTTP(_Section):
    addr: str = ":5000"
    draintimeout: Any = None
    tls: _TLS = _TLS()
    debug: _Debug = _Debug()


class _Proxy(_Section):
    remoteurl: str = DEFAULT_REMOTE
    username: str | None = None
    password: str | None = None
    ttl: Any = None
    offline: bool = False  # pullthrough's: never contact it, serve only what is cached


class _Upstream(_Section):
    name: str
    remoteurl: str
    username: str | None = None
    password: str | None = None
    ttl: Any = None
    tag_freshness: Any = None
    upstream_connect_timeout: Any = None
    upstream_read_timeout: Any = None
    upstream_max_downloads: int | None = None
    upstream_stall_timeout: Any = None
    upstream_stall_budget: Any = None
    offline: bool = False


class _Redis(_Section):
    addr: str | None = None  # host:port; set, it turns cluster mode on
    db: int = 0
    password: str | None = None
    tls: Any = False  # true, or {ca: /path/to/ca.pem}


class _Cluster(_Section):
    redis: _Redis = _Redis()
    advertise: str | None = None
    secret: str | None = None


class _Limits(_Section):
    max_connections: int = 10_000
    header_timeout: Any = "30s"
    idle_timeout: Any = "75s"
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128
    max_body_size: Any = "64KiB"


class _AccessRule(_Section):
    repositories: list[str] = []
    users: list[str] | None = None
    actions: list[str] | None = None  # pull (the default), push, delete


class _Hosted(_Section):
    repositories: list[str] = []  # name prefixes that are hosted (pushed to), not mirrored
    max_manifest_size: Any = "4MiB"
    upload_idle: Any = "1h"  # an upload session untouched this long is removed
    max_uploads_per_client: int = 100  # open upload sessions per client address
    gc_grace: Any = "1h"  # pullthrough gc keeps a blob pushed this recently, referenced or not


class _PolicyRule(_Section):
    upstream: str | None = None
    repositories: list[str] | None = None
    tags: list[str] | None = None
    action: str | None = None


class _Pin(_Section):
    upstream: str | None = None
    repository: str | None = None
    tags: list[str] | None = None


class _SyncEntry(_Section):
    upstream: str | None = None
    repository: str | None = None
    tags: str | None = None  # a regular expression, or a semver range such as '>=3.19 <4'
    interval: Any = None
    platforms: list[str] | None = None  # of an index: only these (default: all)


class _Outbound(_Section):
    allow: list[str] = []  # CIDRs, IP addresses or host names the mirror may connect to


class _AdhocUpstreams(_Section):
    max: int = 64  # slots for registries nobody configured (mirror.allow_any_upstream)
    idle: Any = "10m"  # a slot unused this long is given back


class _UI(_Section):
    enabled: bool = True  # the status page and its JSON API under /ui/
    history_interval: Any = "1m"  # how often the charts' history is sampled


class _LocalCache(_Section):
    path: str = "./data"  # staging for downloads, the index, and the cached blobs
    maxsize: Any = 0  # bytes of blobs kept on local disk in front of the bucket; 0: none


class _MirrorS3(_Section):
    localcache: _LocalCache = _LocalCache()
    redirect_expiry: Any = "20m"  # how long a presigned blob URL is valid


class _Mirror(_Section):
    limits: _Limits = _Limits()
    access: list[_AccessRule] = []
    policy: list[_PolicyRule] = []
    pins: list[_Pin] = []
    sync: list[_SyncEntry] = []
    sync_quota_reserve: int = 20  # upstream pulls (ratelimit-remaining) a sync leaves alone
    sync_jobs: int = 4  # tags one upstream's syncs work on at once
    upstreams: list[_Upstream] = []
    default_upstream: str | None = None
    allow_any_upstream: bool = False
    allow_anonymous_with_upstream_credentials: bool = False
    verify_on_read: bool = True
    verify_interval: Any = "24h"
    scrub_rate: Any = "20MB/s"
    upstream_connect_timeout: Any = "5s"
    upstream_read_timeout: Any = "30s"
    upstream_max_downloads: int = 64
    upstream_stall_timeout: Any = "10s"
    upstream_stall_budget: Any = "25s"
    tag_freshness: Any = "0s"
    index_path: str | None = None
    maxsize: Any = None
    gc_interval: Any = "1m"
    gc_batch: int = 1000
    cluster: _Cluster = _Cluster()
    outbound: _Outbound = _Outbound()
    adhoc_upstreams: _AdhocUpstreams = _AdhocUpstreams()
    ui: _UI = _UI()
    hosted: _Hosted = _Hosted()
    s3: _MirrorS3 = _MirrorS3()  # used with storage.s3


class Root(_Section):
    version: str | float = "0.1"
    log: _Log = _Log()
    storage: _Storage = _Storage()
    http: _HTTP = _HTTP()
    proxy: _Proxy = _Proxy()
    auth: dict[str, Any] | None = None
    mirror: _Mirror = _Mirror()


@dataclass(frozen=True, slots=True)
class _EnvKey:
    path: tuple[str, ...]
    text: bool  # a string key: the variable's value is taken as it is, not read as YAML


def _known_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[str, _EnvKey]:
    """``HTTP_ADDR`` → ("http", "addr") for every key the schema knows (lists, such as
    ``mirror.upstreams``, are set from the file only)."""
    out: dict[str, _EnvKey] = {}
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        out["_".join(path).upper()] = _EnvKey(path, _is_text(info.annotation))
        sub = _section_type(info.annotation)
        if sub is not None:
            out.update(_known_paths(sub, path))
    return out


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a key holds (``_S3`` for ``_S3 | None``), or None for a plain value."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_text(annotation: Any) -> bool:
    """``str``, ``str | None`` or a Literal of strings."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
    else:
        members = [annotation]
    return all(
        a is str or (get_origin(a) is Literal and all(isinstance(v, str) for v in get_args(a)))
        for a in members
    )


def _env_value(key: _EnvKey, text: str) -> Any:
    """A string key takes the text as it is: YAML would turn the password ``pa: ss`` into a
    mapping, ``#x`` into nothing and ``0123`` into 83. Other keys (numbers, booleans,
    durations, sections) are read as YAML, as distribution does. An empty variable
    leaves an optional key unset, as it did when every value was read as YAML."""
    if key.text:
        return text if text else None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply ``REGISTRY_*`` overrides to ``raw`` in place; returns warnings for unknown ones."""
    known = _known_paths(Root)
    warnings: list[str] = []
    for var in sorted(environ):
        if not var.startswith("REGISTRY_"):
            continue
        key = known.get(var[len("REGISTRY_") :])
        if key is None:
            warnings.append(f"environment variable {var} names no key pullthrough knows; ignored")
            continue
        node = raw
        for part in key.path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[key.path[-1]] = _env_value(key, environ[var])
    return warnings


def unknown_keys(model: BaseModel, path: str = "") -> list[str]:
    found: list[str] = []
    for key in model.model_extra or {}:
        dotted = f"{path}.{key}" if path else key
        if path == "" and key in _IGNORED_SECTIONS:
            continue
        if key in _IGNORED_KEYS.get(path, set()):
            continue
        if path == "storage" and key not in ("filesystem", "s3"):
            continue  # other storage drivers are rejected separately, with a clearer message
        if path == "storage.s3":
            continue  # an error, not a warning: config.s3 rejects it naming the key
        found.append(f"unknown key {dotted}: ignored")
    for name in type(model).model_fields:
        value = getattr(model, name)
        where = f"{path}.{name}" if path else name
        if isinstance(value, BaseModel):
            found.extend(unknown_keys(value, where))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found.extend(unknown_keys(item, f"{where}[{i}]"))
    return found
