"""Reading and validating a config file (plus ``REGISTRY_*`` overrides) into a Config."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pullthrough.clientauth.access import AccessRule, PatternError, is_registry_component, qualify
from pullthrough.clientauth.htpasswd import HtpasswdError, parse_htpasswd
from pullthrough.clientauth.tokens import TokenVerifier
from pullthrough.config.model import (
    DEFAULT_TTL,
    DOCKER_HUB_NAME,
    DRAIN_TIMEOUT,
    AuthConfig,
    ClusterConfig,
    Config,
    HostedConfig,
    Limits,
    StoreLimit,
    UpstreamConfig,
)
from pullthrough.config.policy import pins, policy_rules
from pullthrough.config.redact import shown, validation_message
from pullthrough.config.s3 import s3_config
from pullthrough.config.schema import Root, _Cluster, apply_env, unknown_keys
from pullthrough.config.sync import sync_entries, sync_jobs, sync_quota_reserve
from pullthrough.config.values import (
    ConfigError,
    check_url,
    parse_addr,
    parse_duration,
    parse_rate,
    parse_size,
)
from pullthrough.upstream.outbound import OutboundPolicy

_STORAGE_DRIVERS = {"azure", "gcs", "swift", "oss", "inmemory"}
# An upstream name is a registry host (``ghcr.io``, ``registry.example.com:5000``): it is
# what containerd sends as ``?ns=`` and what a path prefix names.
_UPSTREAM_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")


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
    return _validate(raw, env_warnings, Path(path) if path is not None else None)


def _validate(raw: dict[str, Any], warnings: list[str], path: Path | None = None) -> Config:
    try:
        root = Root.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(validation_message(err["loc"], err["msg"], err.get("input"))) from None
    storage_extra = set(root.storage.model_extra or {}) & _STORAGE_DRIVERS
    if storage_extra:
        other = sorted(storage_extra)[0]
        raise ConfigError(
            f"storage.{other}: pullthrough supports storage.filesystem and storage.s3"
        )
    s3 = s3_config(root)

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

    if s3 is not None:
        rootdir = s3.local_path  # downloads in progress, the index and the local cache
    else:
        rootdir = Path(root.storage.filesystem.rootdirectory)
        if not str(rootdir).strip():
            raise ConfigError("storage.filesystem.rootdirectory: must not be empty")

    upstreams = _upstreams(root)
    debug = root.http.debug
    if debug.prometheus.enabled and not debug.addr:
        warnings.append("http.debug.prometheus.enabled: needs http.debug.addr to be served")
    default = root.mirror.default_upstream or DOCKER_HUB_NAME
    if default not in {u.name for u in upstreams}:
        raise ConfigError(
            f"mirror.default_upstream: {default!r} names no upstream "
            f"(configured: {', '.join(u.name for u in upstreams)})"
        )

    warnings = [*warnings, *unknown_keys(root)]
    auth = _auth(root.auth)
    for ca in tls.clientcas:
        if not Path(ca).is_file():
            raise ConfigError(f"http.tls.clientcas: cannot read {ca}")
    if root.http.tls.clientcas and not tls.certificate:
        raise ConfigError("http.tls.clientcas: needs http.tls.certificate and key")
    with_credentials = [u.name for u in upstreams if u.username]
    if with_credentials and auth is None and not _loopback(host):
        if not root.mirror.allow_anonymous_with_upstream_credentials:
            raise ConfigError(
                f"auth: upstream credentials are configured ({', '.join(with_credentials)}) but "
                f"no client authentication, on {root.http.addr}: anyone who reaches the port "
                "could pull every private image those credentials can read. Set auth.htpasswd "
                "or auth.token, listen on a loopback address, or accept it explicitly with "
                "mirror.allow_anonymous_with_upstream_credentials: true"
            )
        warnings.append(
            "mirror.allow_anonymous_with_upstream_credentials: anyone who reaches this port "
            f"can pull every private image the credentials of {', '.join(with_credentials)} "
            "can read"
        )
    access = _access(root, auth, upstreams, default, warnings)
    hosted = _hosted(root, upstreams)
    cluster = _cluster(
        root.mirror.cluster,
        host,
        port,
        https=bool(tls.certificate),
        bucket=s3 is not None,
        warnings=warnings,
    )
    if s3 is not None and isinstance(root.mirror.maxsize, str) and "%" in root.mirror.maxsize:
        raise ConfigError(
            "mirror.maxsize: with storage.s3 give a size such as 500GiB (a bucket has no "
            "capacity to take a share of; mirror.s3.localcache.maxsize caps the local disk)"
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
        upstreams=upstreams,
        default_upstream=default,
        allow_any_upstream=root.mirror.allow_any_upstream,
        auth=auth,
        tls_clientcas=tuple(tls.clientcas),
        verify_on_read=root.mirror.verify_on_read,
        verify_interval=parse_duration(root.mirror.verify_interval, "mirror.verify_interval"),
        scrub_rate=parse_rate(root.mirror.scrub_rate, "mirror.scrub_rate"),
        limits=_limits(root),
        maxsize=_maxsize(root.mirror.maxsize),
        debug_addr=parse_addr(debug.addr, "http.debug.addr") if debug.addr else None,
        metrics_path=_metrics_path(debug.prometheus.path) if debug.prometheus.enabled else None,
        gc_interval=_positive(root.mirror.gc_interval, "mirror.gc_interval"),
        drain_timeout=_drain_timeout(root.http.draintimeout),
        gc_batch=_batch(root.mirror.gc_batch),
        cluster=cluster,
        access=access,
        policy=policy_rules(root.mirror.policy),
        pins=pins(root.mirror.pins, {u.name for u in upstreams}),
        sync=sync_entries(root.mirror.sync, {u.name for u in upstreams}),
        sync_quota_reserve=sync_quota_reserve(root.mirror.sync_quota_reserve),
        sync_jobs=sync_jobs(root.mirror.sync_jobs),
        path=path,
        outbound_allow=_outbound_allow(root.mirror.outbound.allow),
        adhoc_max=_adhoc_max(root.mirror.adhoc_upstreams.max),
        adhoc_idle=_positive(root.mirror.adhoc_upstreams.idle, "mirror.adhoc_upstreams.idle"),
        ui_enabled=root.mirror.ui.enabled,
        ui_history_interval=_positive(
            root.mirror.ui.history_interval, "mirror.ui.history_interval"
        ),
        hosted=hosted,
        s3=s3,
        warnings=tuple(warnings),
    )


def _access(
    root: Root,
    auth: AuthConfig | None,
    upstreams: tuple[UpstreamConfig, ...],
    default: str,
    warnings: list[str],
) -> tuple[AccessRule, ...]:
    """``mirror.access``: per-repository pull rules, patterns qualified with their registry."""
    entries = root.mirror.access
    if not entries:
        return ()
    if auth is not None and auth.kind == "token":
        raise ConfigError(
            "mirror.access: with auth.token the token server's access claims decide who may "
            "pull what; per-repository rules are for auth.htpasswd users or anonymous clients"
        )
    names = {u.name for u in upstreams}
    hub = next(u for u in upstreams if u.name == default).is_docker_hub
    rules = []
    for i, entry in enumerate(entries):
        key = f"mirror.access[{i}]"
        if not entry.repositories:
            raise ConfigError(
                f"{key}.repositories: required, a list of patterns such as library/* or "
                "ghcr.io/acme/**"
            )
        patterns = []
        for j, pattern in enumerate(entry.repositories):
            try:
                qualified = qualify(pattern, default, hub)
            except PatternError as exc:
                raise ConfigError(f"{key}.repositories[{j}]: {exc}") from None
            registry = qualified.split("/", 1)[0]
            literal = "*" not in registry and is_registry_component(registry)
            if literal and registry not in names and not root.mirror.allow_any_upstream:
                raise ConfigError(
                    f"{key}.repositories[{j}]: {registry} is not a mirrored registry "
                    f"(configured: {', '.join(sorted(names))})"
                )
            patterns.append(qualified)
        users = None
        if entry.users is not None:
            if auth is None:
                raise ConfigError(
                    f"{key}.users: names users, but no client authenticates: set auth.htpasswd "
                    "(or leave users out to let every client pull these repositories)"
                )
            bad = [u for u in entry.users if not u.strip() or ":" in u]
            if bad or not entry.users:
                raise ConfigError(
                    f'{key}.users: expected htpasswd user names or "*" (any user), got '
                    f"{entry.users!r}"
                )
            users = tuple(u.strip() for u in entry.users)
            _warn_unknown_users(f"{key}.users", users, auth, warnings)
        rules.append(AccessRule(tuple(patterns), users, _actions(entry.actions, key)))
    return tuple(rules)


_ACTIONS = ("pull", "push", "delete")


def _actions(given: list[str] | None, key: str) -> tuple[str, ...]:
    """A rule's actions: pull unless it says otherwise (push and delete concern hosted
    repositories only, and are granted only where a rule names them)."""
    if given is None:
        return ("pull",)
    bad = [a for a in given if a not in _ACTIONS]
    if bad or not given:
        raise ConfigError(f"{key}.actions: expected some of pull, push, delete, got {given!r}")
    return tuple(dict.fromkeys(given))


def _hosted(root: Root, upstreams: tuple[UpstreamConfig, ...]) -> HostedConfig | None:
    """``mirror.hosted``: which names are pushed to here rather than mirrored."""
    section = root.mirror.hosted
    if not section.repositories:
        return None
    names = {u.name for u in upstreams}
    prefixes = []
    for i, prefix in enumerate(section.repositories):
        key = f"mirror.hosted.repositories[{i}]"
        text = prefix.strip().strip("/") if isinstance(prefix, str) else ""
        if not text or not _HOSTED_PREFIX.match(text) or len(text) > 200:
            raise ConfigError(
                f"{key}: {str(prefix)[:100]!r} is not a repository name prefix (lower-case "
                "components separated by /, such as acme or team/images)"
            )
        first = text.split("/", 1)[0]
        if first in names or is_registry_component(first):
            # A name is hosted or mirrored, never both: a prefix that names a registry
            # would take over (or shadow) what that upstream's clients address.
            raise ConfigError(
                f"{key}: {text!r} starts with a registry host name; hosted names must not "
                "look like a mirrored registry's path prefix"
            )
        prefixes.append(text)
    if section.max_uploads_per_client < 1:
        raise ConfigError("mirror.hosted.max_uploads_per_client: must be at least 1")
    return HostedConfig(
        prefixes=tuple(prefixes),
        max_manifest_size=parse_size(section.max_manifest_size, "mirror.hosted.max_manifest_size"),
        upload_idle=_positive(section.upload_idle, "mirror.hosted.upload_idle"),
        max_uploads_per_client=section.max_uploads_per_client,
        delete_enabled=root.storage.delete.enabled,
        gc_grace=parse_duration(section.gc_grace, "mirror.hosted.gc_grace"),
    )


_HOSTED_PREFIX = re.compile(r"^[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*$")


def _warn_unknown_users(
    key: str, users: tuple[str, ...], auth: AuthConfig | None, warnings: list[str]
) -> None:
    """A name the htpasswd file lacks is likely a typo; it may also be a user added later
    (the file is re-read while serving), so a warning rather than an error."""
    if auth is None or auth.path is None:
        return
    try:
        known = parse_htpasswd(auth.path.read_text(), str(auth.path))
    except (OSError, HtpasswdError):
        return  # reported by _auth already
    missing = [u for u in users if u != "*" and u not in known]
    if missing:
        warnings.append(f"{key}: not in {auth.path} (yet): {', '.join(missing)}")


def _outbound_allow(entries: list[str]) -> tuple[str, ...]:
    """``mirror.outbound.allow``, checked now: each entry a CIDR, IP address or host name."""
    for i, entry in enumerate(entries):
        try:
            OutboundPolicy.parse([entry])
        except ValueError as exc:
            raise ConfigError(f"mirror.outbound.allow[{i}]: {exc}") from None
    return tuple(entries)


def _maxsize(value: Any) -> StoreLimit | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ConfigError(
                f"mirror.maxsize: expected a size like 50GiB or 80%, got {value!r}"
            ) from None
        if not 0 < percent <= 100:
            raise ConfigError("mirror.maxsize: a percentage must be above 0 and at most 100")
        return StoreLimit(percent=percent)
    size = parse_size(value, "mirror.maxsize")
    if size <= 0:
        raise ConfigError("mirror.maxsize: must be greater than zero")
    return StoreLimit(bytes=size)


# mirror.cluster.secret: long enough that guessing it is out of the question.
MIN_SECRET = 16


def _cluster(
    section: _Cluster, host: str, port: int, *, https: bool, bucket: bool, warnings: list[str]
) -> ClusterConfig | None:
    """``mirror.cluster``, or None (one process, SQLite) when no Redis address is set."""
    redis = section.redis
    if not redis.addr:
        if section.advertise or section.secret:
            raise ConfigError("mirror.cluster.redis.addr: required to run as a cluster")
        return None
    text = str(redis.addr).strip()
    # ":6379" means this host, as for distribution's own redis.addr.
    redis_host, redis_port = parse_addr(
        f"127.0.0.1{text}" if text.startswith(":") else text, "mirror.cluster.redis.addr"
    )
    if redis.db < 0:
        raise ConfigError("mirror.cluster.redis.db: must not be negative")
    tls, ca = _redis_tls(redis.tls)
    if section.advertise:
        advertise = check_url(section.advertise, "mirror.cluster.advertise")
    else:
        # A name for this replica in claims and logs. On a shared store peers never dial
        # it (followers read the shared store); on a bucket they do (cluster.peers), so
        # there it must be an address the other replicas reach.
        name = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        advertise = f"{'https' if https else 'http'}://{name}:{port}"
    if section.secret is not None and len(section.secret) < MIN_SECRET:
        raise ConfigError(
            f"mirror.cluster.secret: at least {MIN_SECRET} characters (the replicas sign "
            "their requests to each other with it)"
        )
    if section.secret and not bucket:
        warnings.append(
            "mirror.cluster.secret: not used: on a shared store replicas stream a blob "
            "another replica is fetching from the store, not from each other"
        )
    if bucket and not section.secret:
        warnings.append(
            "mirror.cluster.secret: not set: a replica waits until the replica fetching a "
            "blob has uploaded it before its clients get a byte; with the same secret on "
            "every replica they stream it from that replica at once"
        )
    return ClusterConfig(
        redis_host=redis_host,
        redis_port=redis_port,
        redis_db=redis.db,
        redis_password=redis.password,
        redis_tls=tls,
        redis_tls_ca=ca,
        advertise=advertise,
        secret=section.secret,
    )


def _redis_tls(value: Any) -> tuple[bool, str | None]:
    """``tls: true`` (system CAs) or ``tls: {ca: /path}`` (a private CA)."""
    if isinstance(value, bool):
        return value, None
    if isinstance(value, dict) and set(value) <= {"ca"}:
        ca = str(value.get("ca") or "")
        if ca and not Path(ca).is_file():
            raise ConfigError(f"mirror.cluster.redis.tls.ca: cannot read {ca}")
        return True, ca or None
    raise ConfigError(
        "mirror.cluster.redis.tls: expected true, false or {ca: /path/to/ca.pem}, "
        f"got {shown(value)}"
    )


def _drain_timeout(value: Any) -> float:
    """``http.draintimeout`` in seconds; unset keeps the default (``0s`` cuts transfers off)."""
    if value is None:
        return DRAIN_TIMEOUT
    return parse_duration(value, "http.draintimeout")


def _metrics_path(path: str) -> str:
    if not path.startswith("/") or path.startswith("/debug/health"):
        raise ConfigError(
            f"http.debug.prometheus.path: expected a path such as /metrics, got {path!r}"
        )
    return path


def _adhoc_max(value: int) -> int:
    if value < 1:
        raise ConfigError(
            "mirror.adhoc_upstreams.max: must be at least 1 (to mirror no registry nobody "
            "configured, leave mirror.allow_any_upstream false)"
        )
    return value


def _batch(value: int) -> int:
    if value < 1:
        raise ConfigError("mirror.gc_batch: must be at least 1")
    return value


def _upstreams(root: Root) -> tuple[UpstreamConfig, ...]:
    """``proxy:`` as the upstream named docker.io, then every ``mirror.upstreams`` entry;
    an entry inherits the mirror-wide time-outs and freshness unless it sets its own."""
    mirror = root.mirror
    connect = _positive(mirror.upstream_connect_timeout, "mirror.upstream_connect_timeout")
    read = _positive(mirror.upstream_read_timeout, "mirror.upstream_read_timeout")
    downloads = _max_downloads(mirror.upstream_max_downloads, "mirror.upstream_max_downloads")
    stall, budget = _stalls(mirror.upstream_stall_timeout, mirror.upstream_stall_budget, "mirror")
    freshness = parse_duration(mirror.tag_freshness, "mirror.tag_freshness")
    proxy = root.proxy
    if (proxy.username is None) != (proxy.password is None):
        raise ConfigError("proxy.username: username and password must be given together")
    found = [
        UpstreamConfig(
            name=DOCKER_HUB_NAME,
            url=check_url(proxy.remoteurl, "proxy.remoteurl"),
            username=proxy.username,
            password=proxy.password,
            ttl=DEFAULT_TTL if proxy.ttl is None else parse_duration(proxy.ttl, "proxy.ttl"),
            connect_timeout=connect,
            read_timeout=read,
            stall_timeout=stall,
            stall_budget=budget,
            tag_freshness=freshness,
            max_downloads=downloads,
            offline=proxy.offline,
        )
    ]
    for i, entry in enumerate(mirror.upstreams):
        key = f"mirror.upstreams[{i}]"
        name = entry.name.strip().lower()
        if not _UPSTREAM_NAME.match(name):
            raise ConfigError(
                f"{key}.name: {entry.name!r} is not a registry host name such as ghcr.io"
            )
        if name in {u.name for u in found}:
            where = "proxy:" if name == DOCKER_HUB_NAME else "another entry"
            raise ConfigError(f"{key}.name: {name} is already configured by {where}")
        if (entry.username is None) != (entry.password is None):
            raise ConfigError(f"{key}.username: username and password must be given together")
        entry_stall, entry_budget = (
            (stall, budget)
            if entry.upstream_stall_timeout is None and entry.upstream_stall_budget is None
            else _stalls(
                _given(entry.upstream_stall_timeout, mirror.upstream_stall_timeout),
                _given(entry.upstream_stall_budget, mirror.upstream_stall_budget),
                key,
            )
        )
        found.append(
            UpstreamConfig(
                name=name,
                url=check_url(entry.remoteurl, f"{key}.remoteurl"),
                username=entry.username,
                password=entry.password,
                ttl=DEFAULT_TTL if entry.ttl is None else parse_duration(entry.ttl, f"{key}.ttl"),
                connect_timeout=connect
                if entry.upstream_connect_timeout is None
                else _positive(entry.upstream_connect_timeout, f"{key}.upstream_connect_timeout"),
                read_timeout=read
                if entry.upstream_read_timeout is None
                else _positive(entry.upstream_read_timeout, f"{key}.upstream_read_timeout"),
                stall_timeout=entry_stall,
                stall_budget=entry_budget,
                tag_freshness=freshness
                if entry.tag_freshness is None
                else parse_duration(entry.tag_freshness, f"{key}.tag_freshness"),
                max_downloads=downloads
                if entry.upstream_max_downloads is None
                else _max_downloads(entry.upstream_max_downloads, f"{key}.upstream_max_downloads"),
                offline=entry.offline,
            )
        )
    return tuple(found)


def _max_downloads(value: int, key: str) -> int:
    if value < 1:
        raise ConfigError(
            f"{key}: must be at least 1 (blob downloads from one upstream at once; beyond "
            "them clients get 503 with Retry-After)"
        )
    return value


def _stalls(window: Any, budget: Any, section: str) -> tuple[float, float]:
    """``upstream_stall_timeout`` and ``upstream_stall_budget`` of ``section`` (``mirror``
    or one ``mirror.upstreams`` entry, which inherits what it leaves out)."""
    seconds = _positive(window, f"{section}.upstream_stall_timeout")
    total = _positive(budget, f"{section}.upstream_stall_budget")
    if total < seconds:
        # A budget below the window would quietly shorten the window: say so instead.
        raise ConfigError(
            f"{section}.upstream_stall_budget: must be at least upstream_stall_timeout "
            f"({seconds:g}s), got {budget!r}"
        )
    return seconds, total


def _given(value: Any, inherited: Any) -> Any:
    return inherited if value is None else value


def _limits(root: Root) -> Limits:
    raw = root.mirror.limits
    for key in ("max_connections", "max_line_size", "max_field_size", "max_headers"):
        if getattr(raw, key) < 1:
            raise ConfigError(f"mirror.limits.{key}: must be at least 1")
    return Limits(
        max_connections=raw.max_connections,
        header_timeout=_positive(raw.header_timeout, "mirror.limits.header_timeout"),
        idle_timeout=_positive(raw.idle_timeout, "mirror.limits.idle_timeout"),
        max_line_size=raw.max_line_size,
        max_field_size=raw.max_field_size,
        max_headers=raw.max_headers,
        max_body_size=parse_size(raw.max_body_size, "mirror.limits.max_body_size"),
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _auth(raw: dict[str, Any] | None) -> AuthConfig | None:
    """``auth.htpasswd`` or ``auth.token``, checked now (file readable, bcrypt only,
    certificate bundle loadable) so a bad one stops start-up, not the first pull."""
    if not raw:
        return None
    kinds = sorted(raw)
    if len(kinds) != 1 or kinds[0] not in ("htpasswd", "token"):
        raise ConfigError(
            f"auth: pullthrough supports auth.htpasswd or auth.token (one of them), got "
            f"{', '.join(kinds)}"
        )
    kind = kinds[0]
    section = raw[kind] if isinstance(raw[kind], dict) else {}
    realm = str(section.get("realm") or "")
    if not realm:
        raise ConfigError(f"auth.{kind}.realm: required")
    if kind == "htpasswd":
        path = Path(str(section.get("path") or ""))
        try:
            parse_htpasswd(path.read_text(), str(path))
        except OSError as exc:
            raise ConfigError(f"auth.htpasswd.path: cannot read {path}: {exc.strerror}") from None
        except HtpasswdError as exc:
            raise ConfigError(f"auth.htpasswd.path: {exc}") from None
        return AuthConfig(kind, realm, path=path)
    for key in ("service", "issuer", "rootcertbundle"):
        if not section.get(key):
            raise ConfigError(f"auth.token.{key}: required")
    bundle = Path(str(section["rootcertbundle"]))
    try:
        TokenVerifier(
            issuer=str(section["issuer"]), service=str(section["service"]), rootcertbundle=bundle
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auth.token.rootcertbundle: cannot use {bundle}: {exc}") from None
    return AuthConfig(
        kind,
        realm,
        service=str(section["service"]),
        issuer=str(section["issuer"]),
        rootcertbundle=bundle,
    )


def _positive(value: Any, key: str) -> float:
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(f"{key}: must be greater than zero")
    return seconds
