"""scripts/audit_deps.py, the dependency audit CI runs on requirements.lock.

It is run as CI runs it (a subprocess) against a small index on loopback that answers the
project JSON endpoint the way the real one does, so each verdict can be checked, including
the ones that must fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "audit_deps.py"

ADVISORY = {
    "id": "PYSEC-2099-1",
    "aliases": ["CVE-2099-0001", "GHSA-aaaa-bbbb-cccc"],
    "summary": "request smuggling in the chunked parser",
    "fixed_in": ["2.0.1"],
    "withdrawn": None,
}


def project(newest: str, releases: dict[str, list[dict[str, Any]]],
            vulnerabilities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"info": {"version": newest}, "releases": releases,
            "vulnerabilities": vulnerabilities or []}


FILE = {"filename": "x.whl", "yanked": False, "yanked_reason": None}
YANKED = {"filename": "x.whl", "yanked": True, "yanked_reason": "remote code execution"}

PROJECTS = {
    "clean-pkg": project("1.2", {"1.1": [FILE], "1.2": [FILE]}),
    "vuln-pkg": project("2.0", {"2.0": [FILE]}, [ADVISORY]),
    # the same advisory again under its GHSA id, as the index lists it
    "dup-pkg": project("2.0", {"2.0": [FILE]}, [
        ADVISORY, {**ADVISORY, "id": "GHSA-aaaa-bbbb-cccc",
                   "aliases": ["CVE-2099-0001", "PYSEC-2099-1"]}]),
    "withdrawn-pkg": project("3.0", {"3.0": [FILE]}, [{**ADVISORY, "withdrawn": "2099-01-01"}]),
    "yanked-pkg": project("1.1", {"1.0": [YANKED], "1.1": [FILE]}),
    "typing-extensions": project("4.16.0", {"4.16.0": [FILE]}),
}


@pytest.fixture(scope="module")
def index_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = self.path.strip("/").split("/")
            body = PROJECTS.get(parts[1]) if len(parts) == 3 and parts[2] == "json" else None
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    server.shutdown()
    server.server_close()


def audit(tmp_path: Path, index_url: str, lock: str, *flags: str) -> tuple[int, str]:
    path = tmp_path / "requirements.lock"
    path.write_text(lock)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), "--index-url", index_url, "--timeout", "10",
         *flags], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_clean_lock_passes(tmp_path: Path, index_url: str) -> None:
    code, out = audit(tmp_path, index_url, "# pins\nclean-pkg==1.2\ntyping_extensions==4.16.0\n")
    assert code == 0, out
    assert "2 pinned packages, 0 with known vulnerabilities, 0 partly checked" in out


def test_known_vulnerability_in_the_pinned_release_fails(tmp_path: Path, index_url: str) -> None:
    code, out = audit(tmp_path, index_url, "clean-pkg==1.2\nvuln-pkg==2.0\n")
    assert code == 1
    assert ("VULNERABLE vuln-pkg==2.0: PYSEC-2099-1 (CVE-2099-0001, GHSA-aaaa-bbbb-cccc), "
            "fixed in 2.0.1: request smuggling") in out


def test_one_advisory_under_two_ids_is_reported_once(tmp_path: Path, index_url: str) -> None:
    code, out = audit(tmp_path, index_url, "dup-pkg==2.0\n")
    assert code == 1
    assert out.count("VULNERABLE") == 1


def test_withdrawn_advisory_is_not_a_finding(tmp_path: Path, index_url: str) -> None:
    code, out = audit(tmp_path, index_url, "withdrawn-pkg==3.0\n")
    assert code == 0, out


def test_yanked_release_fails(tmp_path: Path, index_url: str) -> None:
    code, out = audit(tmp_path, index_url, "yanked-pkg==1.0\n")
    assert code == 1
    assert "release 1.0 was yanked: remote code execution" in out


def test_older_pin_is_partly_checked_and_strict_fails_it(tmp_path: Path, index_url: str) -> None:
    code, out = audit(tmp_path, index_url, "clean-pkg==1.1\n")
    assert code == 0, out
    assert "partly checked clean-pkg==1.1: newest is 1.2" in out
    code, out = audit(tmp_path, index_url, "clean-pkg==1.1\n", "--strict")
    assert code == 1


def test_older_pin_fails_on_an_advisory_open_in_the_newest(tmp_path: Path, index_url: str) -> None:
    PROJECTS["old-vuln-pkg"] = project("2.0", {"1.9": [FILE], "2.0": [FILE]}, [ADVISORY])
    code, out = audit(tmp_path, index_url, "old-vuln-pkg==1.9\n")
    assert code == 1
    assert "(open in the newest release 2.0)" in out


@pytest.mark.parametrize("lock, message", [
    ("unknown-pkg==1.0\n", "NOT AUDITED unknown-pkg==1.0: the index answered 404"),
    ("clean-pkg==9.9\n", "NOT AUDITED clean-pkg==9.9: the index has no release 9.9"),
    ("clean-pkg>=1.0\n", "requirements.lock:1: not a pinned requirement"),
    ("# nothing\n", "pins nothing"),
])
def test_what_cannot_be_audited_fails(tmp_path: Path, index_url: str, lock: str,
                                      message: str) -> None:
    code, out = audit(tmp_path, index_url, lock)
    assert code == 2
    assert message in out


def test_unreachable_index_fails(tmp_path: Path) -> None:
    # a port that was just free: nothing listens there
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out = audit(tmp_path, f"http://127.0.0.1:{port}/pypi", "clean-pkg==1.2\n")
    assert code == 2
    assert "could not ask the index" in out


def test_the_lock_pins_every_declared_dependency() -> None:
    """A dependency added to pyproject.toml but not to the lock would install unaudited."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = meta["dependencies"] + meta["optional-dependencies"]["test"]
    names = {dep.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
             for dep in declared}
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {line.split("==")[0].strip().lower().replace("_", "-")
              for line in lock.splitlines() if "==" in line and not line.startswith("#")}
    missing = {n for n in names if n.lower().replace("_", "-") not in pinned}
    assert not missing, f"run scripts/lock.sh: not pinned in requirements.lock: {missing}"
