"""Run Debian's ``docker-registry`` (distribution 2.8) as a real loopback process."""

from __future__ import annotations

import atexit
import hashlib
import secrets
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import bcrypt
import yaml

from .images import MANIFEST_ACCEPT
from .net import LOOPBACK, HTTPResponse, clean_env, free_port, http_request
from .regclient import bearer_request
from .servers import kill_process, spawn_logged, stop_process, wait_answering

if TYPE_CHECKING:
    from .tokens import TokenIssuer

REGISTRY_BINARY = "/usr/bin/docker-registry"


_LIVE: weakref.WeakSet[Registry] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: terminate (by PID) any registry a test forgot to stop."""
    for reg in list(_LIVE):
        reg.stop()


class RegistryError(RuntimeError):
    """The registry process failed to start or misbehaved; message has the log tail."""


class Registry:
    """A ``docker-registry serve`` process on ``127.0.0.1:<port>`` with its own storage.

    Everything lives under ``root`` (a fresh temp dir when not given): ``config.yml``,
    ``storage/``, ``registry.log`` and, with ``htpasswd``, ``htpasswd``.

    ``token_auth=TokenIssuer(...)`` configures ``auth.token`` (realm, service, issuer,
    rootcertbundle) from that issuer, like Docker Hub: clients must get a Bearer
    token from the issuer's realm. The issuer must be started before this registry
    and is never started or stopped by it. ``htpasswd`` and ``token_auth`` are
    mutually exclusive.

    ``storage_driver`` replaces the filesystem driver's entry under ``storage`` (for example
    ``{"s3": {...}}``, see ``s3_server.CephS3.distribution_storage``); ``blob_path`` and the
    other on-disk helpers then see nothing.

    ``stop()`` followed by ``start()`` reuses the same port, config and storage, so
    content survives a simulated outage. The temp dir is only removed by ``cleanup()`` and
    only if this object created it.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        port: int | None = None,
        htpasswd: tuple[str, str] | None = None,
        proxy_remoteurl: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        binary: str = REGISTRY_BINARY,
        extra_config: dict[str, Any] | None = None,
        token_auth: TokenIssuer | None = None,
        storage_driver: dict[str, Any] | None = None,
    ) -> None:
        if htpasswd is not None and token_auth is not None:
            raise ValueError("htpasswd and token_auth are mutually exclusive")
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="registry-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.htpasswd = htpasswd
        self.token_auth = token_auth
        self.proxy_remoteurl = proxy_remoteurl
        self.proxy_username = proxy_username
        self.proxy_password = proxy_password
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary
        self.extra_config = extra_config or {}
        self.storage_driver = storage_driver
        self.storage_dir = self.root / "storage"
        self.config_path = self.root / "config.yml"
        self.log_path = self.root / "registry.log"
        self.htpasswd_path = self.root / "htpasswd"
        self._secret = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._hashed_password: bytes | None = None
        self._ever_started = False

    # ------------------------------------------------------------------ properties
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` — the registry part of a ``docker://`` reference."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}"

    @property
    def creds(self) -> tuple[str, str] | None:
        """Credentials a client should present, or ``None``.

        The ``htpasswd=`` pair; with ``token_auth`` the issuer's first user (Basic
        credentials for its realm; skopeo does the Bearer flow itself); else ``None``.
        """
        if self.token_auth is not None:
            return self.token_auth.first_user()
        return self.htpasswd

    @property
    def token_issuer(self) -> TokenIssuer | None:
        """The ``TokenIssuer`` given as ``token_auth=``, or ``None``."""
        return self.token_auth

    @property
    def pid(self) -> int | None:
        """PID of the running process, or ``None`` when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (it may not be serving yet)."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ config
    def _write_htpasswd(self) -> None:
        assert self.htpasswd is not None
        user, password = self.htpasswd
        if ":" in user:
            raise ValueError("htpasswd user must not contain ':'")
        if self._hashed_password is None:
            # cost 5 keeps startup and every authenticated request fast.
            self._hashed_password = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5))
        self.htpasswd_path.write_bytes(user.encode() + b":" + self._hashed_password + b"\n")

    def config(self) -> dict[str, Any]:
        """Return the config dict written to ``config.yml`` (handy for debugging)."""
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {
                "level": "info",
                "formatter": "text",
                "fields": {"service": "registry"},
                "accesslog": {"disabled": False},
            },
            "storage": {
                **(self.storage_driver or {"filesystem": {"rootdirectory": str(self.storage_dir)}}),
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": self._secret,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd is not None:
            cfg["auth"] = {
                "htpasswd": {"realm": "pullthrough-test", "path": str(self.htpasswd_path)}
            }
        if self.token_auth is not None:
            cfg["auth"] = {"token": self.token_auth.registry_config()}
        if self.proxy_remoteurl is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy_remoteurl}
            if self.proxy_username is not None:
                proxy["username"] = self.proxy_username
            if self.proxy_password is not None:
                proxy["password"] = self.proxy_password
            cfg["proxy"] = proxy
        _deep_merge(cfg, self.extra_config)
        return cfg

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Registry:
        """Start the process and wait until ``GET /v2/`` answers 200 or 401.

        Raises ``RegistryError`` with the log tail if it exits or does not answer
        within ``start_timeout`` seconds. Idempotent while running.
        """
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except RegistryError as err:
                in_use = "address already in use" in str(err)
                if not in_use or attempt == attempts - 1 or self._ever_started:
                    raise
                self.port = free_port()  # lost a port race on first start: pick another
        return self

    def _start_once(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.htpasswd is not None:
            self._write_htpasswd()
        if self.token_auth is not None and not (
            self.token_auth.running and self.token_auth.cert_path.is_file()
        ):
            raise RegistryError(f"start the token issuer before the registry: {self.token_auth!r}")
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = clean_env()
        # REGISTRY_* variables override config.yml entries; never inherit them. Nor AWS_*:
        # the S3 driver's SDK reads them (an AWS_CA_BUNDLE makes it panic at start, since
        # it cannot add a CA to the transport it is given), and its config says all it needs.
        env = {k: v for k, v in env.items() if not k.startswith(("REGISTRY_", "AWS_"))}
        self._proc = spawn_logged(
            [self.binary, "serve", str(self.config_path)],
            self.log_path,
            env=env,
            cwd=self.root,
            banner=f"--- starting {self.binary} on {self.host} ---",
            new_session=True,
        )
        _LIVE.add(self)
        try:
            wait_answering(
                self._proc,
                self.url,
                name="docker-registry",
                timeout=self.start_timeout,
                log_tail=self.log_tail,
                error=RegistryError,
                stop_timeout=self.stop_timeout,
            )
        except RegistryError:
            self._proc = None
            raise
        self._ever_started = True

    def stop(self) -> None:
        """SIGTERM the process (SIGKILL after ``stop_timeout``) and wait for it. Idempotent."""
        proc, self._proc = self._proc, None
        stop_process(proc, self.stop_timeout, kill_timeout=self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL the process immediately (an abrupt crash rather than a shutdown)."""
        proc, self._proc = self._proc, None
        kill_process(proc, self.stop_timeout)

    def restart(self) -> Registry:
        """``stop()`` then ``start()``; same port and storage."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop, and delete ``root`` if this instance created it."""
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Registry {self.url} {state} root={self.root}>"

    # ------------------------------------------------------------------ inspection
    def log_tail(self, lines: int = 40, *, whole_file: bool = False) -> str:
        """Last ``lines`` lines of the log since the latest ``start()`` (or of the whole file)."""
        if not self.log_path.exists():
            return "<no log>"
        with open(self.log_path, "rb") as f:
            if not whole_file:
                f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """Whole log file (all runs)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        auth: tuple[str, str] | None | bool = True,
        timeout: float = 10.0,
    ) -> HTTPResponse:
        """HTTP request to ``self.url + path``; every status is returned, never raised.

        ``auth=True`` uses ``creds`` (if any), a tuple uses that pair, ``False`` sends no
        credentials. With ``token_auth`` and ``auth`` not ``False`` the Bearer flow is
        done like a client would (see ``regclient.bearer_request``: anonymous token if no
        creds); with ``auth=False`` the registry's 401 challenge comes back as-is.
        """
        creds = self.creds if auth is True else (None if auth is False else auth)
        if self.token_auth is not None and auth is not False:
            return bearer_request(
                method, self.url + path, headers=headers, data=data, creds=creds, timeout=timeout
            )
        return http_request(
            method, self.url + path, headers=headers, data=data, auth=creds, timeout=timeout
        )

    def get_manifest(
        self, repo: str, reference: str, *, accept: str = MANIFEST_ACCEPT
    ) -> HTTPResponse:
        """``GET /v2/<repo>/manifests/<reference>`` with an Accept covering OCI and Docker types."""
        return self.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps blob ``digest`` (may not exist)."""
        algo, _, hexd = digest.partition(":")
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def has_blob(self, digest: str) -> bool:
        """True if blob ``digest`` is in this registry's storage (any repository)."""
        return self.blob_path(digest).is_file()

    def blob_digests_on_disk(self) -> set[str]:
        """All blob digests present in storage (manifests are blobs too)."""
        base = self.storage_dir / "docker/registry/v2/blobs"
        out: set[str] = set()
        if not base.exists():
            return out
        for data in base.glob("*/*/*/data"):
            out.add(f"{data.parent.parent.parent.name}:{data.parent.name}")
        return out

    def corrupt_blob_on_disk(self, digest: str) -> None:
        """Flip one byte of a stored blob in place (same length) to simulate bit rot."""
        path = self.blob_path(digest)
        raw = bytearray(path.read_bytes())
        if not raw:
            raise ValueError(f"blob {digest} is empty")
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() != digest


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


RegistryFactory = Callable[..., Registry]
"""Type of the ``registry_factory`` fixture: ``factory(**Registry_kwargs) -> started Registry``."""
