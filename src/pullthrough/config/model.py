"""The validated configuration the running mirror is given."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pullthrough.clientauth.access import AccessRule

DEFAULT_REMOTE = "https://registry-1.docker.io"
DOCKER_HUB_NAME = "docker.io"
DEFAULT_TTL = 168 * 3600.0


# http.draintimeout: how long SIGTERM lets transfers in flight finish. The default fits
# inside Docker's 10 s stop timeout, so a plain `docker stop` still ends in a drain.
DRAIN_TIMEOUT = 8.0

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
    # A blob download that hears nothing for stall_timeout resumes (Range); all its
    # stalls together may last stall_budget, then it gives up (mirror.stalls).
    stall_timeout: float = 10.0
    stall_budget: float = 25.0
    tag_freshness: float = 0.0
    max_downloads: int = 64  # blob downloads from it at once; beyond: 503 + Retry-After
    # Never contacted: only what is cached is served (``pullthrough offline`` flips it).
    offline: bool = False

    @property
    def is_docker_hub(self) -> bool:
        """Docker Hub rules (``alpine`` is ``library/alpine``) apply to the upstream named
        ``docker.io``, which ``proxy:`` is unless configured otherwise."""
        return self.name == DOCKER_HUB_NAME


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``auth.htpasswd`` (realm, path) or ``auth.token`` (realm, service, issuer,
    rootcertbundle): how clients prove who they are."""

    kind: str  # "htpasswd" or "token"
    realm: str
    path: Path | None = None
    service: str | None = None
    issuer: str | None = None
    rootcertbundle: Path | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """``mirror.limits``: what one client may cost the server."""

    max_connections: int = 10_000
    header_timeout: float = 30.0  # a new connection must send a whole request by then
    idle_timeout: float = 75.0  # keep-alive connections idle longer are closed
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128
    max_body_size: int = 64 * 1024  # pulls send no body; a larger one is refused unread


@dataclass(frozen=True, slots=True)
class StoreLimit:
    """``mirror.maxsize``: bytes, or a share of the store's filesystem."""

    bytes: int | None = None
    percent: float | None = None

    def resolve(self, capacity: int) -> int:
        """The limit in bytes on a filesystem of ``capacity`` bytes."""
        if self.bytes is not None:
            return self.bytes
        return int(capacity * (self.percent or 100.0) / 100.0)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``mirror.cluster``: replicas sharing one storage root coordinate through Redis."""

    redis_host: str
    redis_port: int
    advertise: str  # this replica's URL for its peers; also its name in claims and logs
    redis_db: int = 0
    redis_password: str | None = field(default=None, repr=False)
    redis_tls: bool = False
    redis_tls_ca: str | None = None
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class S3Config:
    """``storage.s3``: blobs live in a bucket (distribution's S3 driver's parameters),
    with a local directory for downloads in progress, the index and an optional cache."""

    bucket: str
    region: str
    endpoint: str  # scheme://host[:port], from regionendpoint or the region
    path_style: bool  # bucket in the path (most S3-compatible servers), not the host name
    access_key: str | None = field(default=None, repr=False)  # None: the AWS chain
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # Where the keys came from when the config has none (an AWS shared credentials file).
    credentials_from: str | None = None
    prefix: str = ""  # rootdirectory, without slashes at either end
    verify_tls: bool = True
    chunk_size: int = 10 * 1024 * 1024  # multipart part size
    encrypt: bool = False
    kms_key_id: str | None = None
    storage_class: str | None = "STANDARD"  # None: let the bucket decide ("NONE")
    object_acl: str = "private"
    user_agent: str | None = None
    redirect: bool = True  # blob GETs answered with a presigned URL (storage.redirect)
    redirect_expiry: float = 1200.0
    local_path: Path = Path("./data")
    local_cache: int = 0  # bytes of blobs kept on local disk; 0: none


@dataclass(frozen=True, slots=True)
class HostedConfig:
    """``mirror.hosted``: repository names clients push to (kept, never evicted), beside
    the mirrored ones. A name is hosted when it is one of ``prefixes`` or lies under one."""

    prefixes: tuple[str, ...]
    max_manifest_size: int = 4 * 1024 * 1024
    upload_idle: float = 3600.0
    max_uploads_per_client: int = 100
    delete_enabled: bool = False  # storage.delete.enabled
    gc_grace: float = 3600.0  # gc keeps blobs pushed this recently (their manifest may follow)

    def holds(self, name: str) -> bool:
        return any(name == p or name.startswith(p + "/") for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``mirror.policy`` entry as validated: what it matches and what it decides.

    ``repositories`` are patterns relative to the upstream (``*`` one path component,
    ``**`` any number), already in the form requests are resolved to (on Docker Hub a
    one-component pattern is under ``library/``). ``tags`` None: the rule is about the
    whole repository; otherwise tag globs."""

    index: int  # its position in mirror.policy, which names it in errors and logs
    upstream: str  # an upstream name, or a glob over names ("*")
    repositories: tuple[str, ...]
    tags: tuple[str, ...] | None
    action: str  # "allow" or "deny"

    @property
    def key(self) -> str:
        return f"mirror.policy[{self.index}]"

    def describe(self) -> str:
        """The rule as ``pullthrough check`` prints it and a DENIED message names it."""
        tags = f" tags {', '.join(self.tags)}" if self.tags is not None else ""
        return (
            f"{self.action} upstream {self.upstream} repositories "
            f"{', '.join(self.repositories)}{tags}"
        )


@dataclass(frozen=True, slots=True)
class Pin:
    """Tags kept for good (``mirror.pins``, or ``pullthrough pin``): the manifests they
    resolve to and everything those reference are never evicted. ``tag`` is a glob."""

    upstream: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.upstream}/{self.repository}:{self.tag}"


@dataclass(frozen=True, slots=True)
class SyncEntry:
    """One ``mirror.sync`` entry: every ``interval`` the tags of ``repository`` on
    ``upstream`` that ``tags`` matches are resolved and what is missing is fetched.
    ``tags`` is a regular expression (searched, so anchor it) unless ``semver``: then a
    range such as ``>=3.19 <4``. ``platforms`` (``os/arch[/variant]``): of an index, only
    these; empty: all."""

    index: int  # its position in mirror.sync, which names it in errors and logs
    upstream: str
    repository: str
    tags: str
    semver: bool
    interval: float
    platforms: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"mirror.sync[{self.index}]"

    def describe(self) -> str:
        platforms = f" platforms {', '.join(self.platforms)}" if self.platforms else ""
        kind = "semver" if self.semver else "regex"
        return (
            f"{self.upstream}/{self.repository} tags {kind} {self.tags!r} every "
            f"{self.interval:g}s{platforms}"
        )


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
    upstreams: tuple[UpstreamConfig, ...]
    default_upstream: str
    allow_any_upstream: bool
    auth: AuthConfig | None
    maxsize: StoreLimit | None = None
    debug_addr: tuple[str, int] | None = None  # http.debug.addr: health (and metrics)
    metrics_path: str | None = None  # http.debug.prometheus.path when enabled
    tls_clientcas: tuple[str, ...] = ()
    verify_on_read: bool = True
    verify_interval: float = 24 * 3600.0  # how often the scrub starts a pass over the store
    scrub_rate: int = 20 * 1000**2  # bytes/s the background scrub re-hashes at most; 0 = off
    limits: Limits = Limits()
    gc_interval: float = 60.0
    drain_timeout: float = DRAIN_TIMEOUT  # http.draintimeout
    gc_batch: int = 1000
    cluster: ClusterConfig | None = None  # None: one process, SQLite index
    access: tuple[AccessRule, ...] = ()  # mirror.access; empty: no per-repository rules
    policy: tuple[PolicyRule, ...] = ()  # mirror.policy; empty: everything may be mirrored
    pins: tuple[Pin, ...] = ()  # mirror.pins: one per (upstream, repository, tag glob)
    sync: tuple[SyncEntry, ...] = ()  # mirror.sync: refreshed on a schedule
    sync_quota_reserve: int = 20  # a sync stops where ratelimit-remaining would go below it
    sync_jobs: int = 4  # tags one upstream's syncs resolve and fetch at once
    path: Path | None = None  # the file this was read from (re-read for mirror.policy)
    outbound_allow: tuple[str, ...] = ()  # mirror.outbound.allow: non-public hosts allowed
    adhoc_max: int = 64  # mirror.adhoc_upstreams.max: ad-hoc upstream slots at once
    adhoc_idle: float = 600.0  # mirror.adhoc_upstreams.idle: unused this long, given back
    ui_enabled: bool = True  # mirror.ui.enabled: the status page and its API under /ui/
    ui_history_interval: float = 60.0  # mirror.ui.history_interval: charts sampled this often
    hosted: HostedConfig | None = None  # None: every name is mirrored
    s3: S3Config | None = None  # storage.s3; None: the filesystem under ``root``
    warnings: tuple[str, ...] = ()

    @property
    def upstream(self) -> UpstreamConfig:
        """The default upstream: where names without ``?ns=`` or a prefix go."""
        return next(u for u in self.upstreams if u.name == self.default_upstream)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain HTTP."""
        if not self.tls_certificate:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls_certificate, self.tls_key)
        if self.tls_clientcas:
            # Mutual TLS: only clients with a certificate from one of these CAs get in.
            for ca in self.tls_clientcas:
                ctx.load_verify_locations(cafile=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
