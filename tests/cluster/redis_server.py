"""A real ``redis-server`` (Debian's) on a loopback port, with its own directory and
config, stopped by its PID. No persistence: a restart comes back empty, the harshest case
for the replicas (every claim, lock and index entry is gone)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.net import LOOPBACK, clean_env, free_port

REDIS_SERVER = "/usr/bin/redis-server"


def available() -> bool:
    return shutil.which(REDIS_SERVER) is not None


class RedisServer:
    """``password``: started with ``requirepass`` (clients must AUTH)."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "redis.conf"
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {LOOPBACK}",
                    f"dir {self.workdir}",
                    f"logfile {self.log_path}",
                    'save ""',
                    "appendonly no",
                    "daemonize no",
                    "protected-mode yes",
                    *([f"requirepass {self.password}"] if self.password else []),
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    if not sock.recv(16).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID; SIGKILL if it has not exited within ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
