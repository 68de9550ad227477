"""A real ``pullthrough serve`` process for integration tests, stopped by its PID."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import LOOPBACK, clean_env, free_port
from tests.support.servers import kill_process, spawn_logged, stop_process, wait_answering


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
        if "s3" in doc["storage"]:
            # A bucket: the local directory (downloads, index, cache) is mirror.s3's.
            local = doc["storage"].pop("filesystem")["rootdirectory"]
            cache = doc["mirror"].setdefault("s3", {}).setdefault("localcache", {})
            cache.setdefault("path", local)
            self.root = Path(cache["path"])
        else:
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

    def start(self, timeout: float = 15.0) -> MirrorProcess:
        """Start the process; ``RuntimeError`` with the log tail if it exits or does not
        answer ``GET /v2/`` (200, or 401 when auth is configured) within ``timeout`` s."""
        self.proc = spawn_logged(
            [*self.wrapper, sys.executable, "-m", "pullthrough", "serve", str(self.config_path)],
            self.log_path,
            env=clean_env(self.env),
            cwd=self.workdir,
        )
        wait_answering(
            self.proc, self.url, name="pullthrough", timeout=timeout, log_tail=self.log_tail
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL if it does not exit in ``timeout`` seconds."""
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs, as in a crash."""
        kill_process(self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stored_files(self, settle: float = 5.0) -> dict[str, Path]:
        """Every file in the store, by digest (``sha256:<hex>``), once no download is
        under way (waiting at most ``settle`` seconds): a client gets its last byte as
        soon as the digest matched, and the file is put in place just after."""
        deadline = time.monotonic() + settle
        while self._downloading() and time.monotonic() < deadline:
            time.sleep(0.02)
        out: dict[str, Path] = {}
        blob_root = self.root / "blobs"
        if blob_root.exists():
            for path in blob_root.glob("*/*/*"):
                out[f"{path.parent.parent.name}:{path.name}"] = path
        return out

    def _downloading(self) -> bool:
        tmp = self.root / "tmp"
        return tmp.is_dir() and any(p.name.startswith("sha") for p in tmp.iterdir())

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
