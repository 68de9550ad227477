"""A real S3 server on a loopback port: Ceph's RADOS Gateway (Debian's ``radosgw``), on a
one-monitor, one-OSD Ceph cluster that lives in a temp directory.

Ceph 16 (Pacific, what Debian 12 ships) has no standalone RGW backend: ``radosgw`` stores
through RADOS, so ``CephS3`` starts what ``vstart.sh`` would, as private processes: a
``ceph-mon``, a ``ceph-osd`` on ``memstore`` (objects in the OSD's memory, written to its
directory when it shuts down) and ``radosgw`` with its ``beast`` front end, all with
cephx off, their sockets, logs and pid files under the temp directory and nothing under
/etc, /var or /run. Every process is stopped by its PID.

``stop()``/``kill()`` and ``start()`` act on the gateway only (the S3 endpoint goes away and
comes back on the same port with the same content, as a fault test wants); ``close()`` stops
the whole cluster. ``docs/s3.md`` has the measurements behind the choice.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import shutil
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .net import LOOPBACK, clean_env, free_port
from .servers import kill_process, spawn_logged, stop_process

CEPH_MON = "/usr/bin/ceph-mon"
CEPH_OSD = "/usr/bin/ceph-osd"
RADOSGW = "/usr/bin/radosgw"
RADOSGW_ADMIN = "/usr/bin/radosgw-admin"
CEPH = "/usr/bin/ceph"
MONMAPTOOL = "/usr/bin/monmaptool"
CEPH_AUTHTOOL = "/usr/bin/ceph-authtool"
TOOLS = (CEPH_MON, CEPH_OSD, RADOSGW, RADOSGW_ADMIN, CEPH, MONMAPTOOL, CEPH_AUTHTOOL)
APT_PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")

_LIVE: weakref.WeakSet[CephS3] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: stop (by PID) any cluster a test run forgot to close."""
    for server in list(_LIVE):
        server.close()


def available() -> bool:
    """True when every Ceph binary the server needs is installed."""
    return all(shutil.which(tool) is not None for tool in TOOLS)


class S3ServerError(RuntimeError):
    """A daemon failed to start or a setup command failed; the message has the log tail."""


class CephS3:
    """An S3 endpoint at ``endpoint_url`` with one user (``access_key``/``secret_key``) and
    one empty bucket (``bucket``), backed by a private Ceph cluster under ``root``.

    ``region`` is what clients sign with; RGW accepts any name, and ``us-east-1`` is one
    every client (and distribution's S3 driver) takes without a further setting.
    ``memory_bytes`` is the capacity the OSD reports (memstore keeps objects in RAM, so it
    is also about the most memory the cluster's data may take).

    ``tcp_nodelay=True`` sets beast's ``tcp_nodelay=1``. Without it (radosgw's default) the
    gateway's sockets keep Nagle's algorithm: a response whose body follows its headers in a
    second write waits for the client's delayed ACK, ~40 ms on loopback, so each GET or
    listing of a small object takes ~44 ms where a HEAD takes ~2 ms. A client making many
    small requests per operation (distribution's driver does) is timed mostly by that.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        bucket: str = "pullthrough",
        access_key: str = "PULLTHROUGHTESTKEY00",
        secret_key: str = "pullthrough-test-secret-key-0000000000000",
        region: str = "us-east-1",
        memory_bytes: int = 8 << 30,
        tcp_nodelay: bool = False,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ceph-s3-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.memory_bytes = memory_bytes
        self.tcp_nodelay = tcp_nodelay
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.mon_port = free_port()
        self.port = free_port()
        self.conf_path = self.root / "ceph.conf"
        self.log_dir = self.root / "log"
        self._mon: subprocess.Popen[bytes] | None = None
        self._osd: subprocess.Popen[bytes] | None = None
        self._rgw: subprocess.Popen[bytes] | None = None
        self._provisioned = False
        self.timings: dict[str, float] = {}
        """Seconds each setup step took on the first start (for the notes and benches)."""

    # ------------------------------------------------------------------ what clients need
    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` (plain HTTP, path-style: no DNS name is configured)."""
        return f"http://{LOOPBACK}:{self.port}"

    def distribution_storage(self, rootdirectory: str = "/") -> dict[str, Any]:
        """The ``storage`` entry that points distribution's S3 driver (``docker-registry``)
        at this server: path-style over plain HTTP, keys given, no encryption."""
        return {
            "s3": {
                "accesskey": self.access_key,
                "secretkey": self.secret_key,
                "region": self.region,
                "regionendpoint": self.endpoint_url,
                "forcepathstyle": True,
                "bucket": self.bucket,
                "secure": False,
                "v4auth": True,
                "rootdirectory": rootdirectory,
            }
        }

    @property
    def pid(self) -> int | None:
        """PID of the gateway, or ``None`` while it is stopped."""
        return self._rgw.pid if self.running and self._rgw is not None else None

    @property
    def running(self) -> bool:
        """True while the gateway process is alive (it may not be answering yet)."""
        return self._rgw is not None and self._rgw.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Start the cluster (first time only) and the gateway; return once S3 answers.

        The first start also creates the user and the bucket. Idempotent while running.
        Raises ``S3ServerError`` with the daemon's log tail on failure.
        """
        if self.running:
            return self
        _LIVE.add(self)
        try:
            if self._mon is None:
                self._timed("cluster", self._start_cluster)
            self._timed("gateway", self._start_gateway)
            if not self._provisioned:
                self._timed("user", self._create_user)
                self._timed("bucket", self._create_bucket)
                self._provisioned = True
        except BaseException:
            self.close()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the gateway by PID (SIGKILL after ``stop_timeout``). The cluster, and so
        every object and upload, stays; ``start()`` brings the endpoint back. Idempotent."""
        proc, self._rgw = self._rgw, None
        stop_process(proc, self.stop_timeout, kill_timeout=self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL the gateway by PID: a crash, no shutdown code runs."""
        proc, self._rgw = self._rgw, None
        kill_process(proc, self.stop_timeout)

    def close(self) -> None:
        """Stop the gateway, the OSD and the monitor (by PID), and delete ``root`` if this
        object made it. Idempotent."""
        self.stop()
        # The OSD saves its memstore on a clean shutdown; content is thrown away here anyway.
        for attr in ("_osd", "_mon"):
            proc = getattr(self, attr)
            setattr(self, attr, None)
            kill_process(proc, self.stop_timeout)
        _LIVE.discard(self)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<CephS3 {self.endpoint_url} {state} root={self.root}>"

    def log_tail(self, name: str = "client.rgw", lines: int = 30) -> str:
        """The last ``lines`` lines of a daemon's log (``mon.a``, ``osd.0``, ``client.rgw``)."""
        path = self.log_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            kept = [line for line in path.read_text(errors="replace").splitlines() if line]
            return "\n".join(kept[-lines:])
        return "<no log>"

    # ------------------------------------------------------------------ the cluster
    def _timed(self, step: str, fn: Callable[[], None]) -> None:
        began = time.monotonic()
        fn()
        self.timings.setdefault(step, round(time.monotonic() - began, 2))

    def _config(self, fsid: str) -> str:
        r = self.root
        return f"""\
[global]
fsid = {fsid}
mon host = [v2:{LOOPBACK}:{self.mon_port}]
public addr = {LOOPBACK}
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
# Without cephx there is no "secure" connection mode, and daemons (radosgw among them) ask
# for it from the monitor unless told otherwise: they would retry for minutes.
ms client mode = crc
ms mon client mode = crc
run dir = {r}/run
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
crash dir = {r}/crash
log file = {self.log_dir}/$name.log
log to stderr = false
mon cluster log file = {self.log_dir}/cluster.log
osd journal = {r}/osd.$id/journal
err to stderr = false
keyring = {r}/keyring
mon data = {r}/mon.$id
osd data = {r}/osd.$id
osd objectstore = memstore
memstore device bytes = {self.memory_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 1
osd pool default pgp num = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
# A test machine's disk may be nearly full (a CI runner, other tests' temp files): below 5%
# free the monitor refuses to start by default; memstore keeps the data in memory anyway.
mon data avail crit = 0
mon data avail warn = 0
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# One monitor has no one to agree with: commit each map change at once rather than batching
# for a second (radosgw makes its pools one command at a time; 11 s to answer becomes ~2).
paxos propose interval = 0.01
paxos min wait = 0.001
mgr initial modules =
[client.rgw]
rgw frontends = beast endpoint={LOOPBACK}:{self.port}{" tcp_nodelay=1" if self.tcp_nodelay else ""}
rgw data = {r}/rgw
rgw enable apis = s3, admin
rgw enable usage log = false
# Deleted and overwritten objects free their memory soon, not after the default two hours.
rgw gc obj min wait = 5
rgw gc processor period = 10
"""

    def _start_cluster(self) -> None:
        r = self.root
        # A new cluster every time: what a previous one left in a reused root is thrown away.
        for old in ("monmap", "keyring", "ceph.conf"):
            (r / old).unlink(missing_ok=True)
        for old in ("run", "crash", "rgw", "mon.a", "osd.0"):
            shutil.rmtree(r / old, ignore_errors=True)
        for sub in ("run", "crash", "rgw", "mon.a", "osd.0"):
            (r / sub).mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf_path.write_text(self._config(fsid))
        self._run(
            CEPH_AUTHTOOL, "--create-keyring", str(r / "keyring"), "--gen-key", "-n", "mon.",
            "--cap", "mon", "allow *",
        )  # fmt: skip
        self._run(
            MONMAPTOOL, "--create", "--fsid", fsid,
            "--addv", "a", f"[v2:{LOOPBACK}:{self.mon_port}]", str(r / "monmap"),
        )  # fmt: skip
        self._run(CEPH_MON, *self._c(), "--mkfs", "-i", "a", "--monmap", str(r / "monmap"))
        self._mon = self._daemon("mon.a", CEPH_MON, "-i", "a")
        time.sleep(0.3)
        if self._mon.poll() is not None:  # say why now, not after a command times out
            raise S3ServerError(f"ceph-mon exited at start:\n{self.log_tail('mon.a')}")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run(CEPH, *self._c(), "osd", "new", osd_uuid, timeout=30).strip()
        self._run(CEPH_OSD, *self._c(), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._osd = self._daemon("osd.0", CEPH_OSD, "-i", osd_id)

    def _start_gateway(self) -> None:
        self._rgw = self._daemon("client.rgw", RADOSGW, "-n", "client.rgw")
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            for name, proc in (("client.rgw", self._rgw), ("osd.0", self._osd)):
                if proc is None or proc.poll() is not None:
                    raise S3ServerError(f"{name} exited during startup:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"radosgw did not answer within {self.start_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200  # anonymous ListBuckets: empty list
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _create_user(self) -> None:
        self._run(
            RADOSGW_ADMIN, *self._c(), "-n", "client.rgw", "user", "create",
            "--uid", "pullthrough", "--display-name", "pullthrough tests",
            "--access-key", self.access_key, "--secret-key", self.secret_key,
            timeout=self.start_timeout,
        )  # fmt: skip

    def _create_bucket(self) -> None:
        from .s3_client import create_bucket

        create_bucket(self)

    # ------------------------------------------------------------------ processes
    def _c(self) -> tuple[str, str]:
        return ("-c", str(self.conf_path))

    def _run(self, *argv: str, timeout: float = 20.0) -> str:
        done = subprocess.run(
            argv, cwd=self.root, env=clean_env(), capture_output=True, timeout=timeout
        )
        if done.returncode != 0:
            raise S3ServerError(
                f"{' '.join(argv[:1])} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}"
            )
        return done.stdout.decode()

    def _daemon(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        return spawn_logged(
            [*argv, *self._c(), "-f"],
            self.log_dir / f"{name}.stdout",
            env=clean_env(),
            cwd=self.root,
            new_session=True,
        )
