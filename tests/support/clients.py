"""The container clients people point at a mirror, run privately as root for tests.

Every client gets its own temp directory (root, state, sockets, config, auth file) and
never reads or writes the machine's own configuration: no ``/etc/docker/daemon.json``,
no ``/etc/containers/registries.conf``, no system-wide daemon. Daemons (``containerd``,
``dockerd``) are started in a private mount namespace (``unshare --mount``), so what
they mount (overlayfs layers, dockerd's propagation bind mount, a tmpfs over ``/run``)
disappears with them, and are stopped by PID.

Every client runs with ``HTTPS_PROXY``/``HTTP_PROXY`` pointing at a ``HubGuard``: a
loopback "proxy" that refuses every request and records it. Go never proxies loopback
addresses, so the mirror is reached directly, while any fallback to a real registry
(``registry-1.docker.io``, ``ghcr.io``, any other name: every one of these clients tries
the registry itself when its mirror fails, dockerd without a word) is refused and shows up
in ``HubGuard.attempts``. Nothing leaves the machine.

Classes (each skips the calling test with a clear reason if its binaries are missing, if
not root, or, for the daemons, if ``unshare --mount`` does not work here):

* ``Containerd``: ``containerd --config F`` + ``ctr images pull --hosts-dir DIR``.
* ``DockerDaemon``: ``dockerd`` with ``registry-mirrors`` on its own ``Containerd``,
  pulled from with the ``docker`` CLI of the same package (``/usr/bin/docker``).
* ``Podman``, ``Buildah``: daemonless; a store and ``registries.conf`` per instance.
* ``Skopeo``: ``skopeo --registries-conf F copy docker://... dir:...``.

``AccessLogCursor`` reads the mirror's access log (one line per request) from a mark on.

TLS: ``CertAuthority`` (a throwaway CA made with openssl) issues server and client
certificates; ``cert_dir`` lays them out as containers-certs.d(5) and Docker's certs.d read
them (``ca.crt``, ``client.cert``, ``client.key``); ``DockerDaemon(certs_d=...)`` sees such a
tree at ``/etc/docker/certs.d`` (bind mount in its private mount namespace);
``start_mutual_tls_mirror`` starts a mirror that requires client certificates;
``Ipv6Relay`` puts a loopback mirror at ``[::1]`` for dockerd, which never verifies
certificates of 127.0.0.0/8 registries.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from .net import LOOPBACK, clean_env

if TYPE_CHECKING:
    from .mirror import MirrorProcess

# Binaries, as installed by Debian's docker.io, containerd, podman, buildah and skopeo.
# /usr/local/bin/docker (if any) shadows the docker.io CLI on PATH, so paths are absolute.
DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
PODMAN = "/usr/bin/podman"
BUILDAH = "/usr/bin/buildah"
SKOPEO = "/usr/bin/skopeo"
RUNC = "/usr/sbin/runc"
UNSHARE = "/usr/bin/unshare"
OPENSSL = "/usr/bin/openssl"
DOCKER_ETC = "/etc/docker"

_APT_HINT = "apt-get install docker.io containerd podman buildah skopeo"


def require(*binaries: str) -> None:
    """Skip the calling test unless every binary exists and is executable."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({_APT_HINT})")


def require_root() -> None:
    """Skip unless running as root: these fixtures drive rootful daemons and stores."""
    if os.geteuid() != 0:
        pytest.skip("needs root (rootful dockerd, containerd, podman and buildah)")


class ClientError(RuntimeError):
    """A client command failed or timed out; the message has its output."""

    def __init__(self, cmd: Sequence[str], returncode: int | None, output: str) -> None:
        rc = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(f"{rc}: {' '.join(cmd)}\n{output.strip()[-4000:]}")
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (stdout and stderr merged into ``.stdout``), killed after ``timeout`` s."""
    try:
        proc = subprocess.run(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        raise ClientError(cmd, None, out) from err
    if check and proc.returncode != 0:
        raise ClientError(cmd, proc.returncode, proc.stdout)
    return proc


def _short_dir(prefix: str) -> Path:
    """A short private dir under /tmp: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---------------------------------------------------------------------------- hub guard


class HubGuard:
    """A loopback HTTP proxy that refuses everything and records what was attempted.

    Clients get ``env()`` (``HTTPS_PROXY``/``HTTP_PROXY`` = this, ``NO_PROXY`` = loopback),
    so a fallback to any real registry ends here, answered ``403``, as e.g.
    ``"CONNECT registry-1.docker.io:443 HTTP/1.1"`` or ``"CONNECT ghcr.io:443 HTTP/1.1"``
    in ``attempts`` (the client hands the name to the proxy; it is never resolved).
    """

    def __init__(self) -> None:
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._attempts: list[str] = []
        self._stopping = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def attempts(self) -> list[str]:
        """First request line of every connection made to the guard, in order."""
        with self._lock:
            return list(self._attempts)

    def env(self) -> dict[str, str]:
        """Proxy variables (both cases; Go reads either) pointing at the guard."""
        out: dict[str, str] = {}
        for name, value in (
            ("HTTPS_PROXY", self.url),
            ("HTTP_PROXY", self.url),
            ("NO_PROXY", f"{LOOPBACK},localhost"),
        ):
            out[name] = out[name.lower()] = value
        return out

    def start(self) -> HubGuard:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOOPBACK, 0))
        server.listen(16)
        server.settimeout(0.2)
        self._server = server
        self.port = int(server.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="HubGuard", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n" not in head and len(head) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            line = head.split(b"\r\n", 1)[0].decode(errors="replace") or "<no request line>"
            with self._lock:
                self._attempts.append(line)
            body = b"pullthrough tests: no traffic may leave this machine\n"
            with contextlib.suppress(OSError):
                conn.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> HubGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- mirror access log

_ACCESS_RE = re.compile(
    r'aiohttp\.access: \S+ "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) '
    r'\S+ \S+ "(?P<ua>.*)"\s*$'
)


@dataclass(frozen=True)
class AccessEntry:
    """One line of the mirror's access log."""

    method: str
    target: str
    status: int
    user_agent: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def __str__(self) -> str:
        return f"{self.method} {self.target} -> {self.status} [{self.user_agent[:40]}]"


def access_entries(text: str) -> list[AccessEntry]:
    """Parse aiohttp access-log lines (others are ignored)."""
    out: list[AccessEntry] = []
    for line in text.splitlines():
        m = _ACCESS_RE.search(line)
        if m:
            out.append(AccessEntry(m["method"], m["target"], int(m["status"]), m["ua"]))
    return out


class _HasLog(Protocol):
    def log_text(self) -> str: ...


class AccessLogCursor:
    """The mirror's access-log entries written after this cursor was made (or ``reset``)."""

    def __init__(self, mirror: _HasLog) -> None:
        self.mirror = mirror
        self.offset = 0
        self.reset()

    def reset(self) -> None:
        self.offset = len(self.mirror.log_text())

    def text(self) -> str:
        return self.mirror.log_text()[self.offset :]

    def entries(self) -> list[AccessEntry]:
        return access_entries(self.text())

    def wait_for(
        self, predicate: Callable[[list[AccessEntry]], bool], *, timeout: float = 5.0
    ) -> list[AccessEntry]:
        """Entries once ``predicate(entries)`` holds (the access line is written just after
        the response, so it may trail the client by a moment); ``AssertionError`` if not."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries()
            if predicate(found):
                return found
            if time.monotonic() >= deadline:
                summary = "\n".join(str(e) for e in found)
                raise AssertionError(f"mirror access log never matched; entries:\n{summary}")
            time.sleep(0.05)


# ---------------------------------------------------------------------------- config files


def registries_conf(
    path: Path,
    mirrors: Iterable[str],
    *,
    prefix: str = "docker.io",
    location: str = "docker.io",
    insecure: bool = True,
    also: Mapping[str, Iterable[str]] | None = None,
) -> Path:
    """Write a containers-registries.conf(5) with ``mirrors`` (``host:port[/path]``) for
    ``prefix``, then one ``[[registry]]`` per entry of ``also`` (``{registry: mirrors}``,
    ``prefix = location = registry``: e.g. ``{"ghcr.io": ["host:port/ghcr.io"]}``, a
    path-prefixed mirror); no unqualified-search registries, so short names never resolve
    anywhere."""
    lines = ["unqualified-search-registries = []"]
    blocks = [(prefix, location, mirrors), *((r, r, m) for r, m in (also or {}).items())]
    for block_prefix, block_location, block_mirrors in blocks:
        lines += [
            "",
            "[[registry]]",
            f'prefix = "{block_prefix}"',
            f'location = "{block_location}"',
        ]
        for mirror in block_mirrors:
            lines += [
                "",
                "[[registry.mirror]]",
                f'location = "{mirror}"',
                f"insecure = {'true' if insecure else 'false'}",
            ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def registry_server(registry: str) -> str | None:
    """The ``server`` a ``hosts.toml`` for ``registry`` names: the registry itself (Docker
    Hub's API host for ``docker.io``); none for ``_default``, where containerd falls back to
    whichever registry the image name has."""
    if registry == "_default":
        return None
    return "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"


def containerd_hosts_dir(
    hosts_dir: Path,
    mirror_url: str,
    *,
    registry: str = "docker.io",
    server: str | None = None,
    capabilities: Sequence[str] = ("pull", "resolve"),
) -> Path:
    """Write ``hosts_dir/<registry>/hosts.toml`` naming ``mirror_url`` (``http://host:port``)
    as a mirror of ``registry`` (``_default``: of every registry without its own directory),
    whose own ``server`` (default: ``registry_server(registry)``) stays the fallback."""
    caps = ", ".join(f'"{c}"' for c in capabilities)
    server = server or registry_server(registry)
    target = hosts_dir / registry / "hosts.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    head = f'server = "{server}"\n\n' if server else ""
    target.write_text(
        f'{head}[host."{mirror_url}"]\n  capabilities = [{caps}]\n  skip_verify = true\n'
    )
    return hosts_dir


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PullResult:
    """What a client reported for one pull."""

    ref: str
    digest: str
    """The manifest digest the client reports for ``ref`` (an index's own digest when
    the tag names an index, except where a client's doc says otherwise)."""
    seconds: float
    output: str = field(repr=False)

    def __post_init__(self) -> None:
        PULL_TIMES.append((CURRENT_TEST.get(), self.ref, self.seconds))


# Every pull's time, by test, for the table the client tests print at the end of the run.
CURRENT_TEST: contextvars.ContextVar[str] = contextvars.ContextVar("current_test", default="?")
PULL_TIMES: list[tuple[str, str, float]] = []


# ---------------------------------------------------------------------------- daemons

_LIVE: weakref.WeakSet[_Daemon] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: stop (by PID) any daemon a test forgot to stop."""
    for daemon in list(_LIVE):
        daemon.stop()


def _private_mounts(
    argv: Sequence[str],
    tmpfs: Sequence[str] = (),
    binds: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """``argv`` in a private mount namespace, with a fresh tmpfs on each of ``tmpfs`` and
    each ``(source, target)`` of ``binds`` bind-mounted (read-only) over ``target``, which
    must exist. Only the process sees these mounts; the machine's ``target`` is untouched.

    ``unshare`` and ``sh`` both exec, so the PID stays that of ``argv[0]``. ``mount -n``:
    without it util-linux records each mount in libmount's ``/run/mount/utab``, creating
    ``/run/mount`` on the machine (before the tmpfs covers ``/run``, or beside it), a
    directory only a machine that ran the client tests has.
    """
    script = "".join(
        f'mount -n -t tmpfs -o mode=0755,size=16m pt-tmpfs "{d}" || exit 97; ' for d in tmpfs
    )
    script += "".join(
        f'mount -n --bind "{src}" "{dst}" && mount -n -o remount,bind,ro "{dst}" || exit 98; '
        for src, dst in binds
    )
    return [
        UNSHARE,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script + 'exec "$@"',
        "sh",
        *argv,
    ]


_PRIVATE_MOUNTS_OK: bool | None = None


def require_private_mounts() -> None:
    """Skip unless ``unshare --mount`` (plus a tmpfs mount inside) works here."""
    global _PRIVATE_MOUNTS_OK
    require(UNSHARE)
    if _PRIVATE_MOUNTS_OK is None:
        probe = _private_mounts(["true"], tmpfs=["/run"])
        _PRIVATE_MOUNTS_OK = run(probe, env=clean_env(), timeout=10, check=False).returncode == 0
    if not _PRIVATE_MOUNTS_OK:
        pytest.skip("cannot make a private mount namespace (unshare --mount) to run daemons in")


class _Daemon:
    """A long-running process with its own log, stopped by PID."""

    name = "daemon"
    start_timeout = 60.0
    stop_timeout = 20.0

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.env = clean_env(dict(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _launch(self, argv: Sequence[str], ready: Callable[[], bool]) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                raise RuntimeError(f"{self.name} exited {rc} during start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException, ClientError):
                if ready():
                    return
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} not ready within {self.start_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM by PID; SIGKILL after ``stop_timeout`` s. Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Containerd(_Daemon):
    """``containerd --config F`` with its own root, state, temp dir and sockets.

    The CRI plugin is disabled (no CNI, no kubelet), the ``opt`` plugin's directory (else
    ``/opt/containerd``) is private. ``pull()`` runs ``ctr images pull --hosts-dir``, which
    resolves and fetches in the ``ctr`` process itself (so ``ctr`` is the one that needs
    the proxy env), and unpacks with ``snapshotter`` in the daemon: ``overlayfs`` unless
    the daemon reports that plugin unusable (then ``native``), or as given.
    """

    name = "containerd"

    def __init__(
        self,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        snapshotter: str | None = None,
        namespace: str = "pullthrough-test",
    ) -> None:
        require(CONTAINERD, CTR, UNSHARE)
        require_root()
        require_private_mounts()
        super().__init__(workdir, env)
        self.snapshotter = snapshotter or "overlayfs"
        self._auto_snapshotter = snapshotter is None
        self.namespace = namespace
        self.rundir = _short_dir("pt-ctrd-")
        self.address = str(self.rundir / "containerd.sock")
        self.config_path = self.workdir / "config.toml"

    def config(self) -> str:
        w, r = self.workdir, self.rundir
        return f"""version = 2
root = "{w / "root"}"
state = "{r / "state"}"
temp = "{w / "tmp"}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[debug]
  address = "{r / "debug.sock"}"
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{w / "opt"}"

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{r / "runc-v1"}"
"""

    def start(self) -> Containerd:
        if self.running:
            return self
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text(self.config())
        self._launch(_private_mounts([CONTAINERD, "--config", str(self.config_path)]), self._ready)
        if self._auto_snapshotter and not self.plugin_ok(
            "io.containerd.snapshotter.v1", "overlayfs"
        ):
            self.snapshotter = "native"  # overlayfs unusable here: unpack by copying instead
        return self

    def plugin_ok(self, plugin_type: str, plugin_id: str) -> bool:
        """Whether ``ctr plugins ls`` lists the plugin with status ``ok``."""
        for line in self.ctr(["plugins", "ls"], timeout=30).stdout.splitlines():
            cols = line.split()
            if cols[:2] == [plugin_type, plugin_id]:
                return cols[-1] == "ok"
        return False

    def _ready(self) -> bool:
        if not Path(self.address).exists():
            return False
        return self.ctr(["version"], timeout=5, check=False).returncode == 0

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def ctr(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [CTR, "--address", self.address, "--namespace", self.namespace, *args]
        return run(cmd, env=clean_env(dict(env or {})), timeout=timeout, check=check)

    def pull(
        self,
        ref: str,
        *,
        hosts_dir: Path,
        env: Mapping[str, str] | None = None,
        platform: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 120.0,
    ) -> PullResult:
        """``ctr images pull --hosts-dir`` (fetch + unpack); ``digest`` is the image's target
        (the index's own digest for a multi-platform tag), from ``ctr images ls``."""
        args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", self.snapshotter]
        if platform:
            args += ["--platform", platform]
        start = time.monotonic()
        out = self.ctr([*args, *extra_args, ref], env=env, timeout=timeout).stdout
        seconds = time.monotonic() - start
        return PullResult(ref, self.image_digest(ref), seconds, out)

    def image_digest(self, ref: str) -> str:
        for line in self.ctr(["images", "ls"], timeout=30).stdout.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3 and cols[0] == ref:
                return cols[2]
        raise KeyError(f"{ref} not in ctr images ls")

    def snapshot_count(self) -> int:
        """Committed snapshots in ``snapshotter`` (unpacked layers)."""
        out = self.ctr(["snapshots", "--snapshotter", self.snapshotter, "ls"], timeout=30).stdout
        return sum(1 for line in out.splitlines()[1:] if "Committed" in line)


class DockerDaemon(_Daemon):
    """``dockerd`` with ``registry-mirrors``, running on its own private ``Containerd``.

    Everything is under ``workdir`` (data root, config, logs) or a short /tmp dir (exec
    root, sockets). It runs in a private mount namespace with a tmpfs on ``/run`` (it
    would otherwise create ``/run/docker/plugins``) and ``deprecated-key-path`` in the
    workdir (else it writes ``/etc/docker/key.json``). Networking is off (``bridge:
    none``, no iptables): it only pulls. Its own managed containerd is not used because
    that one creates ``/opt/containerd``.

    ``certs_d``: a directory laid out as Docker's ``/etc/docker/certs.d`` (one
    ``<host:port>/`` per registry or mirror, holding ``ca.crt`` to trust and optionally
    ``client.cert`` + ``client.key`` to present). dockerd has no option to read that
    directory from elsewhere, so a copy of it is bind-mounted over ``/etc/docker`` inside
    the daemon's private mount namespace (the machine's ``/etc/docker`` must exist, as the
    mount point, and is left as it is).
    """

    name = "dockerd"

    def __init__(
        self,
        workdir: Path,
        *,
        mirrors: Sequence[str],
        insecure: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        certs_d: Path | None = None,
    ) -> None:
        require(DOCKERD, DOCKER_CLI, CONTAINERD, RUNC, UNSHARE)
        require_root()
        require_private_mounts()
        if certs_d is not None and not Path(DOCKER_ETC).is_dir():
            pytest.skip(f"{DOCKER_ETC} does not exist: nothing to bind-mount certs.d over")
        super().__init__(workdir, env)
        self.mirrors = list(mirrors)
        self.insecure = list(insecure)
        self.extra_config = dict(extra_config or {})
        self.certs_d = certs_d
        self.rundir = _short_dir("pt-dockerd-")
        self.socket = str(self.rundir / "docker.sock")
        self.config_path = self.workdir / "daemon.json"
        self.containerd = Containerd(self.workdir / "containerd", env=env)

    def config(self) -> dict[str, Any]:
        return {
            "registry-mirrors": self.mirrors,
            "insecure-registries": self.insecure,
            "storage-driver": "vfs",
            "iptables": False,
            "ip6tables": False,
            "ip-forward": False,
            "ip-masq": False,
            "bridge": "none",
            "debug": True,
            "deprecated-key-path": str(self.workdir / "key.json"),
            **self.extra_config,
        }

    def start(self) -> DockerDaemon:
        if self.running:
            return self
        self.containerd.start()
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        binds: list[tuple[Path, str]] = []
        if self.certs_d is not None:
            etc = self.workdir / "etc-docker"
            shutil.rmtree(etc, ignore_errors=True)
            shutil.copytree(self.certs_d, etc / "certs.d")
            binds.append((etc, DOCKER_ETC))
        argv = [
            DOCKERD,
            "--config-file", str(self.config_path),
            "--data-root", str(self.workdir / "data"),
            "--exec-root", str(self.rundir / "exec"),
            "--pidfile", str(self.rundir / "dockerd.pid"),
            "-H", f"unix://{self.socket}",
            "--containerd", self.containerd.address,
        ]  # fmt: skip
        try:
            self._launch(_private_mounts(argv, tmpfs=["/run"], binds=binds), self._ready)
        except BaseException:
            self.containerd.stop()
            raise
        pidfile = int((self.rundir / "dockerd.pid").read_text().strip())
        assert self.proc is not None and pidfile == self.proc.pid, "dockerd PID is not ours"
        return self

    def _ready(self) -> bool:
        if not Path(self.socket).exists():
            return False
        return self.api("GET", "/_ping")[0] == 200

    def api(self, method: str, path: str) -> tuple[int, bytes]:
        """One request to the Engine API on the daemon's unix socket."""
        conn = _UnixHTTPConnection(self.socket, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        super().stop()
        self.containerd.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def docker(
        self, args: Sequence[str], *, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cli_env = clean_env({"DOCKER_CONFIG": str(self.workdir / "cli-config")})
        cmd = [DOCKER_CLI, "-H", f"unix://{self.socket}", *args]
        return run(cmd, env=cli_env, timeout=timeout, check=check)

    def login(
        self, registry: str, user: str, password: str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``docker login REGISTRY``; the credentials go to this daemon's own CLI config
        (``cli-config/config.json``, under the key ``REGISTRY``)."""
        args = ["login", "--username", user, "--password", password, registry]
        return self.docker(args, timeout=60, check=check)

    @property
    def cli_config(self) -> Path:
        """The ``config.json`` the ``docker`` CLI of this daemon reads (``auths``...)."""
        return self.workdir / "cli-config" / "config.json"

    def pull(self, name: str, *, timeout: float = 120.0) -> PullResult:
        """``docker pull NAME``; ``digest`` is the ``Digest:`` line it prints (for a
        multi-platform tag, the index's digest)."""
        start = time.monotonic()
        out = self.docker(["pull", name], timeout=timeout).stdout
        seconds = time.monotonic() - start
        m = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", out, re.M)
        if not m:
            raise ClientError(["docker", "pull", name], 0, "no Digest: line\n" + out)
        return PullResult(name, m[1], seconds, out)

    def image_ids(self) -> list[str]:
        return self.docker(["images", "-q", "--no-trunc"], timeout=30).stdout.split()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


# ---------------------------------------------------------------------------- daemonless


class _ContainersLogin:
    """``login`` as podman, buildah and skopeo (containers/common) all spell it, into the
    instance's own ``auth_file``."""

    auth_file: Path

    def cmd(
        self, args: Sequence[str], *, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def login(
        self, registry: str, user: str, password: str, *, tls_verify: bool, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        args = [
            "login",
            f"--tls-verify={'true' if tls_verify else 'false'}",
            "--authfile", str(self.auth_file),
            "--username", user,
            "--password", password,
            registry,
        ]  # fmt: skip
        return self.cmd(args, timeout=60, check=check)


class _ContainersTool(_ContainersLogin):
    """Shared set-up of podman and buildah (containers/image + containers/storage).

    A private ``storage.conf`` (vfs; root in ``workdir``, runroot in a short /tmp dir that
    ``close()`` removes), ``containers.conf``
    (cgroupfs, file events, file locks instead of ``/dev/shm/libpod_lock``, private tmp
    and network config dirs instead of ``/etc/cni/net.d`` and ``/etc/containers/networks``),
    ``registries.conf`` and an empty auth file. One thing stays shared with the machine:
    containers/image keeps root's blob-info cache in ``/var/lib/containers/cache`` (so
    does the skopeo the rest of the suite uses); it only records digests, and a fresh
    store still downloads every blob.
    """

    binary = ""

    def __init__(
        self,
        workdir: Path,
        *,
        mirrors: Sequence[str],
        env: Mapping[str, str] | None = None,
        registries: Path | None = None,
    ) -> None:
        require(self.binary)
        require_root()
        self.workdir = Path(workdir)
        for sub in ("root", "tmp", "net", "registries.d"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot longer than 50 characters; pytest's tmp_path is longer.
        self.runroot = _short_dir("pt-run-")
        self.registries = registries or registries_conf(self.workdir / "registries.conf", mirrors)
        w = self.workdir
        (w / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{w / "root"}"\nrunroot = "{self.runroot}"\n'
        )
        (w / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{w / "net"}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{w / "tmp"}"\n'
            f'image_copy_tmp_dir = "{w / "tmp"}"\n'
            f'static_dir = "{w / "root" / "libpod"}"\n'
            f'volume_path = "{w / "root" / "volumes"}"\n'
        )
        self.auth_file = w / "auth.json"
        self.auth_file.write_text('{"auths": {}}\n')
        self.env = clean_env(
            {
                **dict(env or {}),
                "CONTAINERS_REGISTRIES_CONF": str(self.registries),
                "CONTAINERS_STORAGE_CONF": str(w / "storage.conf"),
                "CONTAINERS_CONF": str(w / "containers.conf"),
                "REGISTRY_AUTH_FILE": str(self.auth_file),
                "TMPDIR": str(w / "tmp"),
            }
        )

    def close(self) -> None:
        """Remove the short runroot outside ``workdir`` (the store stays for inspection)."""
        shutil.rmtree(self.runroot, ignore_errors=True)

    def global_args(self) -> list[str]:
        raise NotImplementedError

    def cmd(
        self, args: Sequence[str], *, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [self.binary, *self.global_args(), *args], env=self.env, timeout=timeout, check=check
        )

    def image_digest(self, ref: str) -> str:
        raise NotImplementedError

    def pull_args(self) -> list[str]:
        return []

    def pull(
        self,
        ref: str,
        *,
        timeout: float = 120.0,
        check: bool = True,
        extra_args: Sequence[str] = (),
    ) -> PullResult:
        """``<tool> pull REF``; ``digest`` is what the tool records for ``REF`` (empty when
        ``check`` is false: the pull may have failed; see ``output``)."""
        start = time.monotonic()
        args = ["pull", *self.pull_args(), *extra_args, ref]
        out = self.cmd(args, timeout=timeout, check=check).stdout
        seconds = time.monotonic() - start
        return PullResult(ref, self.image_digest(ref) if check else "", seconds, out)


class Podman(_ContainersTool):
    """Rootful ``podman`` on a private vfs store; no daemon. ``pull()``'s digest is the
    image's ``.Digest`` (the index's own digest for a multi-platform tag). Use one store
    per image: podman merges tags that share a config into one image, whose ``.Digest``
    is then the first one pulled."""

    binary = PODMAN

    def global_args(self) -> list[str]:
        w = self.workdir
        return [
            "--root", str(w / "root"),
            "--runroot", str(self.runroot),
            "--tmpdir", str(w / "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip

    def image_digest(self, ref: str) -> str:
        return self.cmd(["image", "inspect", "--format", "{{.Digest}}", ref]).stdout.strip()


class Buildah(_ContainersTool):
    """``buildah`` on a private vfs store. ``pull()``'s digest is the image's ``Digest``
    from ``buildah images`` (the index's own digest for a multi-platform tag)."""

    binary = BUILDAH

    def global_args(self) -> list[str]:
        w = self.workdir
        return [
            "--root", str(w / "root"),
            "--runroot", str(self.runroot),
            "--storage-driver", "vfs",
            "--registries-conf", str(self.registries),
            "--registries-conf-dir", str(w / "registries.d"),
        ]  # fmt: skip

    def pull_args(self) -> list[str]:
        return ["--retry", "0"]

    def image_digest(self, ref: str) -> str:
        out = self.cmd(["images", "--digests", "--format", "{{.Digest}}", ref]).stdout
        return out.split()[0]


class Skopeo(_ContainersLogin):
    """``skopeo --registries-conf F copy docker://REF dir:DEST`` (mirror mode: the
    registries.conf mirrors apply to ``docker://docker.io/...`` sources)."""

    def __init__(
        self,
        workdir: Path,
        *,
        mirrors: Sequence[str],
        env: Mapping[str, str] | None = None,
        registries: Path | None = None,
    ) -> None:
        require(SKOPEO)
        self.workdir = Path(workdir)
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.registries = registries or registries_conf(self.workdir / "registries.conf", mirrors)
        self.auth_file = self.workdir / "auth.json"
        self.auth_file.write_text('{"auths": {}}\n')
        self.env = clean_env({**dict(env or {}), "REGISTRY_AUTH_FILE": str(self.auth_file)})
        self._copies = 0

    def cmd(
        self, args: Sequence[str], *, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        base = [
            SKOPEO,
            "--registries-conf",
            str(self.registries),
            "--tmpdir",
            str(self.workdir / "tmp"),
        ]
        return run([*base, *args], env=self.env, timeout=timeout, check=check)

    def pull(
        self,
        ref: str,
        *,
        all_platforms: bool = False,
        timeout: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> PullResult:
        """Copy ``docker://REF`` into a new ``dir:``; ``digest`` is skopeo's ``--digestfile``:
        the platform manifest's digest for a multi-platform tag, unless ``all_platforms``.
        ``extra_args`` go to ``copy`` (e.g. ``--src-cert-dir DIR``)."""
        self._copies += 1
        dest = self.workdir / f"copy-{self._copies}"
        digest_file = self.workdir / f"copy-{self._copies}.digest"
        args = ["copy", "--retry-times", "0", "--digestfile", str(digest_file), *extra_args]
        if all_platforms:
            args.append("--all")
        start = time.monotonic()
        out = self.cmd([*args, f"docker://{ref}", f"dir:{dest}"], timeout=timeout).stdout
        seconds = time.monotonic() - start
        return PullResult(ref, digest_file.read_text().strip(), seconds, out)

    def try_pull(
        self, ref: str, *, timeout: float = 60.0, extra_args: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """A copy expected to fail: the finished command (output in ``.stdout``), unchecked."""
        self._copies += 1
        dest = self.workdir / f"copy-{self._copies}"
        args = ["copy", "--retry-times", "0", *extra_args, f"docker://{ref}", f"dir:{dest}"]
        return self.cmd(args, timeout=timeout, check=False)


# ---------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its unencrypted private key."""

    cert: Path
    key: Path


class CertAuthority:
    """A throwaway certificate authority made with ``openssl`` (P-256 keys, valid two days):
    ``cert`` (``ca.crt``) to trust, and ``issue()`` for leaf certificates it signs.

    ``issue(name, usage="server")`` is a server certificate for ``IP:127.0.0.1`` (Go
    clients ignore the CN; only the SAN counts); ``usage="client"`` a client certificate.
    """

    def __init__(self, directory: Path, name: str = "pullthrough test CA") -> None:
        require(OPENSSL)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cert = self.directory / "ca.crt"
        self.key = self.directory / "ca.key"
        self._openssl(
            "req", "-x509", "-new", *_EC_KEY, "-nodes", "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(self.key), "-out", str(self.cert),
        )  # fmt: skip

    def issue(self, name: str, *, usage: str = "server", san: str = f"IP:{LOOPBACK}") -> KeyPair:
        """A certificate for ``name`` signed by this CA, as ``<name>.crt`` + ``<name>.key``."""
        if usage not in ("server", "client"):
            raise ValueError(f"usage must be server or client, not {usage!r}")
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        csr = self.directory / f"{name}.csr"
        ext = self.directory / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={'serverAuth' if usage == 'server' else 'clientAuth'}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid,issuer",
        ]
        if san:
            lines.append(f"subjectAltName={san}")
        ext.write_text("\n".join(lines) + "\n")
        self._openssl(
            "req", "-new", *_EC_KEY, "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(pair.key), "-out", str(csr),
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
            "-extfile", str(ext), "-out", str(pair.cert),
        )  # fmt: skip
        return pair

    @staticmethod
    def _openssl(*args: str) -> None:
        run([OPENSSL, *args], env=clean_env(), timeout=60)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def cert_dir(directory: Path, *, ca: Path | None = None, client: KeyPair | None = None) -> Path:
    """A certificate directory as containers-certs.d(5) and Docker's certs.d read it:
    ``ca.crt`` (trusted CA) and ``client.cert`` + ``client.key`` (presented to the server).
    For skopeo's ``--src-cert-dir``, or as ``<certs.d>/<host:port>/`` for dockerd."""
    directory.mkdir(parents=True, exist_ok=True)
    if ca is not None:
        shutil.copyfile(ca, directory / "ca.crt")
    if client is not None:
        shutil.copyfile(client.cert, directory / "client.cert")
        shutil.copyfile(client.key, directory / "client.key")
    return directory


def client_context(ca: Path | None = None, client: KeyPair | None = None) -> ssl.SSLContext:
    """A Python TLS client context trusting ``ca`` (no verification without one: for probes)
    and presenting ``client``."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def start_mutual_tls_mirror(
    mirror: MirrorProcess, client: KeyPair, *, timeout: float = 15.0
) -> MirrorProcess:
    """Start ``mirror`` (made with ``start=False``) whose ``http.tls.clientcas`` requires a
    client certificate, and wait until it answers ``GET /v2/`` to ``client``.

    ``MirrorProcess.start()`` cannot: it waits for an answer to a request made without a
    client certificate, which such a mirror rightly refuses. The command line is the same
    (``python -m pullthrough serve CONFIG``, output appended to ``mirror.log_path``), and
    ``mirror.proc`` is set, so ``mirror.stop()`` (by PID) works as usual.
    """
    with open(mirror.log_path, "ab") as log:
        mirror.proc = subprocess.Popen(
            [sys.executable, "-m", "pullthrough", "serve", str(mirror.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(getattr(mirror, "env", None) or {}),
            cwd=mirror.workdir,
        )
    ctx = client_context(client=client)
    deadline = time.monotonic() + timeout
    while True:
        if mirror.proc.poll() is not None:
            rc = mirror.proc.returncode
            raise RuntimeError(f"pullthrough exited {rc} during start:\n{mirror.log_tail()}")
        conn = http.client.HTTPSConnection(LOOPBACK, mirror.port, timeout=1, context=ctx)
        try:
            conn.request("GET", "/v2/")
            if conn.getresponse().status in (200, 401):
                return mirror
        except (OSError, http.client.HTTPException):
            pass  # not listening yet
        finally:
            conn.close()
        if time.monotonic() >= deadline:
            mirror.stop()
            raise RuntimeError(
                f"pullthrough did not answer within {timeout}s:\n{mirror.log_tail()}"
            )
        time.sleep(0.05)


class Ipv6Relay:
    """Relays every TCP connection made to ``[::1]:<port>`` to ``127.0.0.1:<target_port>``,
    byte for byte (TLS stays end to end between client and server).

    Why: dockerd adds ``127.0.0.0/8`` to its insecure registries whatever its config says
    (moby's ``loadInsecureRegistries``), and for an insecure registry or mirror it skips
    certificate verification and never reads ``certs.d`` (no CA, no client certificate).
    Docker 20.10 does not do that for ``::1``; later versions add ``::1/128`` too, and then
    this relay no longer helps (a test that checks a daemon without the CA is refused
    notices). ``host`` is ``[::1]:<port>``.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def host(self) -> str:
        return f"[::1]:{self.port}"

    def start(self) -> Ipv6Relay:
        try:
            server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            server.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here ({exc}): cannot relay [::1] to the mirror")
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        self.port = int(server.getsockname()[1])
        self._spawn(self._accept)
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="Ipv6Relay", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the end on; the other pump ends the pair

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            sockets, threads = list(self._open), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> Ipv6Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
