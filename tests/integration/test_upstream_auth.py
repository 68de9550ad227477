"""An upstream that requires credentials (distribution with auth.htpasswd)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.images import PushedImage, manifest_digest_in_dir, pull_dir
from tests.support.net import http_request
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
