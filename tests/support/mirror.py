"""A real ``pullthrough serve`` process for integration tests, stopped by its PID."""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import LOOPBACK, clean_env, free_port, http_request


class MirrorProcess:
    """Runs ``python -m pullthrough serve CONFIG`` on a free loopback port.

    ``config`` is merged over a minimal distribution-style config whose storage lives in
    ``workdir/data`` and whose upstream is ``remoteurl``. The process's log is kept in
    ``workdir/mirror.log``; ``start()`` waits until ``GET /v2/`` answers.
    """

    def __init__(
        self,
        workdir: Path,
        remoteurl: str,
        *,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.root = workdir / "data"
        doc: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "debug"},
            "storage": {"filesystem": {"rootdirectory": str(self.root)}},
            "http": {"addr": f"{LOOPBACK}:{self.port}"},
            "proxy": {"remoteurl": remoteurl},
            "mirror": {"upstream_connect_timeout": "2s", "upstream_read_timeout": "10s"},
        }
        _merge(doc, config or {})
        self.root = Path(doc["storage"]["filesystem"]["rootdirectory"])  # as configured
        self.config_path = workdir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(doc))
        self.log_path = workdir / "mirror.log"
        self.env = env or {}
        # A command that execs its arguments (so the PID stays the mirror's), e.g. unshare.
        self.wrapper = wrapper or []
        self.tls = bool(doc.get("http", {}).get("tls"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _answers(self) -> bool:
        if not self.tls:
            # 401: up, and asking for credentials (auth: configured)
            return http_request("GET", f"{self.url}/v2/", timeout=1).status in (200, 401)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(LOOPBACK, self.port, timeout=1, context=ctx)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status in (200, 401)
        finally:
            conn.close()

    def start(self, timeout: float = 15.0) -> MirrorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "pullthrough", "serve", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(self.env),
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pullthrough exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self._answers():
                    return self
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pullthrough did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stored_files(self) -> dict[str, Path]:
        """Every file in the store, by digest (``sha256:<hex>``)."""
        out: dict[str, Path] = {}
        blob_root = self.root / "blobs"
        if blob_root.exists():
            for path in blob_root.glob("*/*/*"):
                out[f"{path.parent.parent.name}:{path.name}"] = path
        return out

    def __enter__(self) -> MirrorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
