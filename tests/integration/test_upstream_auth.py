"""An upstream that requires credentials (distribution with auth.htpasswd)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import PushedImage, manifest_digest_in_dir, pull_dir
from tests.support.net import clean_env, free_port, http_request
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

USER, PASSWORD = "mirror-bot", "s3cret-pass"


@pytest.fixture
def locked(registry_factory, image_factory) -> tuple[Registry, PushedImage]:
    """An upstream that only answers with USER/PASSWORD, holding one image."""
    registry = registry_factory(htpasswd=(USER, PASSWORD))
    return registry, image_factory("team/private", registry=registry)


def test_mirror_pulls_with_configured_upstream_credentials(
    locked: tuple[Registry, PushedImage], mirror_factory, tmp_path: Path
) -> None:
    upstream, image = locked
    anonymous = http_request("GET", f"{upstream.url}/v2/{image.repo}/manifests/{image.tag}")
    assert anonymous.status == 401  # the upstream really is locked

    mirror = mirror_factory(
        upstream.url, config={"proxy": {"username": USER, "password": PASSWORD}}
    )
    pull_dir(image.on(mirror.host), tmp_path / "pulled")
    assert manifest_digest_in_dir(tmp_path / "pulled") == image.digest
    assert PASSWORD not in mirror.log_text()


def test_wrong_upstream_credentials_give_the_client_a_clear_401(
    locked: tuple[Registry, PushedImage], mirror_factory, tmp_path: Path
) -> None:
    upstream, image = locked
    mirror = mirror_factory(
        upstream.url, config={"proxy": {"username": USER, "password": "wrong-password"}}
    )
    resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
    assert resp.status == 401
    error = json.loads(resp.body)["errors"][0]
    assert error["code"] == "UNAUTHORIZED"
    assert "proxy.username" in error["message"]
    assert "wrong-password" not in resp.body.decode()

    failed = pull_dir(image.on(mirror.host), tmp_path / "x", check=False)
    assert failed.returncode != 0
    assert "401" in failed.stderr or "unauthorized" in failed.stderr.lower()
    assert "wrong-password" not in mirror.log_text()


def test_no_upstream_credentials_configured_says_so(
    locked: tuple[Registry, PushedImage], mirror_factory
) -> None:
    upstream, image = locked
    mirror = mirror_factory(upstream.url)
    resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
    assert resp.status == 401
    assert "set proxy.username" in json.loads(resp.body)["errors"][0]["message"]


@pytest.mark.parametrize("password", [PASSWORD, "wrong-password"])
def test_credentials_never_appear_in_metrics_health_or_check(
    locked: tuple[Registry, PushedImage], mirror_factory, tmp_path: Path, password: str
) -> None:
    """What an operator's tools read (metrics, the health page, ``pullthrough check``) after
    pulls that worked or failed: never the upstream password."""
    upstream, image = locked
    port = free_port()
    mirror = mirror_factory(
        upstream.url,
        config={
            "proxy": {"username": USER, "password": password},
            "http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}},
        },
    )
    pull_dir(image.on(mirror.host), tmp_path / "pulled", check=False)
    seen = [
        http_request("GET", f"http://127.0.0.1:{port}/metrics").body.decode(),
        http_request("GET", f"http://127.0.0.1:{port}/debug/health").body.decode(),
        mirror.log_text(),
    ]
    checked = subprocess.run(
        [sys.executable, "-m", "pullthrough", "check", str(mirror.config_path)],
        capture_output=True, text=True, timeout=30, env=clean_env(),
    )
    assert checked.returncode == 0, checked.stderr
    seen += [checked.stdout, checked.stderr]
    assert "pullthrough_requests_total" in seen[0]  # the scrape did return metrics
    assert json.loads(seen[1])["checks"]["upstreams"]["docker.io"]["url"] == upstream.url
    for text in seen:
        assert password not in text
