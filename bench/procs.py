"""Server processes for the bench, and CPU / RSS readings of a whole process tree.

Every process is started by the bench and stopped by its PID (SIGTERM, then SIGKILL).
CPU is utime+stime (+ reaped children's) summed over the tree from /proc; RSS is VmRSS
summed over the tree, sampled, plus each process's VmHWM after a reset via clear_refs.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

LOOPBACK = "127.0.0.1"
REGISTRY_BINARY = "/usr/bin/docker-registry"
BENCH_DIR = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc readings


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds (user+system, including reaped children) of the process tree."""
    total = 0
    for pid in tree_pids(root):
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int, pids: list[int] | None = None) -> int:
    return sum(_status_kib(p, "VmRSS") for p in (pids or tree_pids(root)))


def tree_hwm_kib(root: int) -> int:
    return sum(_status_kib(p, "VmHWM") for p in tree_pids(root))


def reset_hwm(root: int) -> bool:
    """Reset VmHWM of every process in the tree (``echo 5 > clear_refs``)."""
    ok = True
    for pid in tree_pids(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


class TreeMonitor:
    """Samples the tree's summed VmRSS every ``interval`` s; CPU delta over the window."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kib = 0
        self.samples = 0
        self.cpu = 0.0
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self.hwm_reset = reset_hwm(self.root)
        self._cpu0 = tree_cpu(self.root)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = tree_pids(self.root)
        last_scan = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - last_scan > 1.0:
                pids, last_scan = tree_pids(self.root), time.monotonic()
            self.peak_rss_kib = max(self.peak_rss_kib, tree_rss_kib(self.root, pids))
            self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.cpu = tree_cpu(self.root) - self._cpu0
        self.hwm_kib = tree_hwm_kib(self.root)
        self.peak_rss_kib = max(self.peak_rss_kib, tree_rss_kib(self.root))

    def result(self) -> dict[str, Any]:
        return {
            "cpu_s": round(self.cpu, 3),
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "hwm_mib": round(self.hwm_kib / 1024, 1) if self.hwm_reset else None,
            "rss_samples": self.samples,
        }


# --------------------------------------------------------------------------- processes


def clean_env(extra: dict[str, str] | None = None, drop_aws: bool = False) -> dict[str, str]:
    """The environment minus proxy variables and REGISTRY_* overrides (and, ``drop_aws``,
    AWS_*: with a bucket configured, distribution's S3 driver panics on an AWS_CA_BUNDLE, and
    the config says all either mirror needs)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        and not k.startswith("REGISTRY_")
        and not (drop_aws and k.startswith("AWS_"))
    }
    env.update(extra or {})
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_status(
    url: str, timeout: float = 1.0, method: str = "GET", headers: dict[str, str] | None = None
) -> int | None:
    """Status of one request to ``url`` (``http://`` or ``https://``, whose certificate is
    not checked: a probe), or ``None`` if nothing answered."""
    parts = urlsplit(url)
    h, p = parts.hostname or LOOPBACK, parts.port
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(h, p, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(h, p, timeout=timeout)
    try:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Server:
    """A loopback HTTP server process with a config file and a log, stopped by PID.

    ``extra_env`` is added to its environment (e.g. ``SSL_CERT_FILE``). ``blob_probe``, when
    set, is how ``has_blob`` learns that a blob is stored (a HEAD on its bucket's object)."""

    kind = "server"
    scheme = "http"
    blob_probe: Callable[[str], bool] | None = None

    def __init__(self, workdir: Path, name: str, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.name = name
        self.extra_env = dict(extra_env or {})
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return clean_env(self.extra_env)

    def write_config(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Server:
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workdir,
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
            if http_status(f"{self.url}/v2/") in (200, 401):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer GET /v2/ in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


_LIVE: set[Server] = set()


# mirror.cluster.secret of pullthrough's replicas on one bucket in the benches.
PEER_SECRET = "pullthrough bench peers"


def s3_mirror_extra(local: Path, maxsize: str, redis_addr: str | None) -> dict[str, Any]:
    """pullthrough's ``mirror:`` keys for storage.s3: its local directory and cap, and as a
    replica (``redis_addr``) one Redis and one secret for all, so a replica that loses the
    race for a blob streams it from the winner."""
    extra: dict[str, Any] = {"s3": {"localcache": {"path": str(local), "maxsize": maxsize}}}
    if redis_addr is not None:
        extra["cluster"] = {"redis": {"addr": redis_addr}, "secret": PEER_SECRET}
    return extra


def stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


class DockerRegistry(Server):
    """Debian's docker-registry: the upstream (plain, or TLS with ``tls=(cert, key)``) or
    the reference mirror (proxy mode)."""

    kind = "docker-registry"

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        remoteurl: str | None = None,
        log_level: str = "warn",
        tls: tuple[Path, Path] | None = None,
        extra_env: dict[str, str] | None = None,
        storage_driver: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir, name, extra_env)
        self.remoteurl = remoteurl
        self.log_level = log_level
        self.storage = workdir / "storage"
        # Replaces the filesystem driver's entry (e.g. {"s3": {...}}); set blob_probe too.
        self.storage_driver = storage_driver
        self.tls = tls
        if tls is not None:
            self.scheme = "https"

    def command(self) -> list[str]:
        return [REGISTRY_BINARY, "serve", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return clean_env(self.extra_env, drop_aws=self.storage_driver is not None)

    def write_config(self) -> None:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.storage_driver is not None:
            del cfg["storage"]["filesystem"]
            cfg["storage"] = {**self.storage_driver, **cfg["storage"]}
        if self.remoteurl:
            cfg["proxy"] = {"remoteurl": self.remoteurl}
        if self.tls is not None:
            cfg["http"]["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def has_blob(self, digest: str) -> bool:
        if self.blob_probe is not None:
            return self.blob_probe(digest)
        hexd = digest.split(":", 1)[1]
        path = self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        return path.is_file()


class Pullthrough(Server):
    """``pullthrough serve`` (uvloop, the default) or the same app on the stdlib asyncio loop.

    ``src`` (a directory containing the ``pullthrough`` package) is put first on PYTHONPATH,
    so a snapshot of a commit can be benchmarked while the work tree changes.
    """

    kind = "pullthrough"

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        remoteurl: str,
        loop: str = "uvloop",
        tag_freshness: str = "0s",
        src: Path | None = None,
        log_level: str = "warn",
        root: Path | None = None,
        mirror_extra: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
        storage: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir, name, extra_env)
        self.mirror_extra = mirror_extra or {}
        # The whole storage section instead of the filesystem at ``root`` (e.g. {"s3": ...,
        # "redirect": ...}); set blob_probe too.
        self.storage = storage
        self.remoteurl = remoteurl
        self.loop = loop
        self.tag_freshness = tag_freshness
        self.src = src
        self.log_level = log_level
        self.root = root or workdir / "data"

    def command(self) -> list[str]:
        if self.loop == "asyncio":
            return [sys.executable, str(BENCH_DIR / "serve_asyncio.py"), str(self.config_path)]
        return [sys.executable, "-m", "pullthrough", "serve", str(self.config_path)]

    def env(self) -> dict[str, str]:
        extra = dict(self.extra_env)
        if self.src is not None:
            extra["PYTHONPATH"] = str(self.src)
        return clean_env(extra, drop_aws=self.storage is not None)

    def write_config(self) -> None:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "text", "accesslog": {"disabled": True}},
            "storage": self.storage or {"filesystem": {"rootdirectory": str(self.root)}},
            "http": {"addr": self.host},
            "proxy": {"remoteurl": self.remoteurl},
            "mirror": {"tag_freshness": self.tag_freshness, **self.mirror_extra},
        }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def has_blob(self, digest: str) -> bool:
        if self.blob_probe is not None:
            return self.blob_probe(digest)
        hexd = digest.split(":", 1)[1]
        return (self.root / "blobs/sha256" / hexd[:2] / hexd).is_file()
