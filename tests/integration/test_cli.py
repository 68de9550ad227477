"""The command line as a user runs it: embedded default, check, bad configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support.net import clean_env, free_port, http_request
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


def _pullthrough(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_without_config_uses_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env({"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pullthrough", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        status = 0
        while time.monotonic() < deadline:
            try:
                resp = http_request("GET", f"http://127.0.0.1:{port}/v2/", timeout=1)
                status = resp.status
                break
            except OSError:
                time.sleep(0.05)
        assert status == 200
        assert resp.header("Docker-Distribution-API-Version") == "registry/2.0"
        assert (tmp_path / "data" / "blobs").is_dir()
        assert (tmp_path / "data" / "index.db").is_file()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "https://registry-1.docker.io" in out
    assert f"127.0.0.1:{port}" in out


def test_check_accepts_a_distribution_proxy_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {fields: {service: registry}}\n"
        "storage: {filesystem: {rootdirectory: /var/lib/registry}, delete: {enabled: true}}\n"
        "http: {addr: '127.0.0.1:5000', headers: {X-Content-Type-Options: [nosniff]}}\n"
        "proxy: {remoteurl: https://registry-1.docker.io, username: u, password: hunter2}\n"
    )
    result = _pullthrough("check", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("proxy: {remoteurl: 'https://bob:hunter2@registry.example'}", {}, "proxy.remoteurl"),
        ("proxy: {username: bob, password: 4815162342}", {}, "proxy.password"),
        (
            "mirror: {upstreams: [{name: ghcr.io, remoteurl: 'https://bob:hunter2@ghcr.io'}]}",
            {},
            "mirror.upstreams[0].remoteurl",
        ),
        (
            "",
            {"REGISTRY_PROXY_REMOTEURL": "https://bob:hunter2@registry.example"},
            "proxy.remoteurl",
        ),
    ],
)
def test_check_and_serve_refuse_a_credential_without_showing_it(
    tmp_path: Path, text: str, env: dict[str, str], key: str
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(text)
    for command in ("check", "serve"):
        result = _pullthrough(command, str(config), cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert key in result.stderr
        for secret in ("hunter2", "4815162342"):
            assert secret not in result.stdout + result.stderr


def test_check_prints_each_access_rule_as_it_reads_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "mirror:\n"
        "  upstreams: [{name: ghcr.io, remoteurl: 'https://ghcr.io'}]\n"
        "  access:\n"
        "    - repositories: [alpine, 'ghcr.io/acme/**']\n"
    )
    result = _pullthrough("check", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "mirror.access[0]: every client may pull docker.io/library/alpine, ghcr.io/acme/**"
        in result.stdout
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("proxy: {remoteurl: '::nope'}", "proxy.remoteurl"),
        ("proxy: {ttl: -5m}", "proxy.ttl"),
        ("log: {level: shouting}", "log.level"),
        (
            "http: {tls: {certificate: /no/such/cert.pem, key: /no/such/key.pem}}",
            "http.tls.certificate",
        ),
    ],
)
def test_bad_config_stops_start_up_with_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(text)
    for command in ("check", "serve"):
        result = _pullthrough(command, str(config), cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert key in lines[0]
        assert "Traceback" not in result.stderr


def test_unknown_keys_are_warnings_not_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("proxy: {remoteurl: http://127.0.0.1:1, flavour: vanilla}\n")
    result = _pullthrough("check", str(config), cwd=tmp_path)
    assert result.returncode == 0
    assert "proxy.flavour" in result.stderr


def test_health_asks_the_registry_port_without_a_debug_address(
    mirror_factory: MirrorFactory, upstream: Registry
) -> None:
    mirror = mirror_factory(upstream.url)
    healthy = _pullthrough("health", str(mirror.config_path), cwd=mirror.workdir)
    assert healthy.returncode == 0, healthy.stderr
    assert f"healthy: 127.0.0.1:{mirror.port}/v2/ answered 200" in healthy.stdout
    mirror.stop()
    down = _pullthrough("health", str(mirror.config_path), "--timeout", "2", cwd=mirror.workdir)
    assert down.returncode == 1
    assert f"unhealthy: 127.0.0.1:{mirror.port}/v2/" in down.stderr


def test_a_bare_config_path_is_served_as_registry_2_does(tmp_path: Path) -> None:
    config = tmp_path / "my.yml"
    config.write_text('version: 0.1\nhttp: {addr: "nonsense"}\n')
    bare = _pullthrough(str(config), cwd=tmp_path)
    served = _pullthrough("serve", str(config), cwd=tmp_path)
    assert bare.returncode == served.returncode == 2
    assert bare.stderr == served.stderr
    assert "http.addr: expected host:port" in bare.stderr
