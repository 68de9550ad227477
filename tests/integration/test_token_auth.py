"""Docker Hub's Bearer token flow against a real registry with ``auth.token`` and the test
suite's own token issuer: tokens per scope, cached until they expire, refreshed once on
401, and credentials only for a realm on the upstream's own domain."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.images import manifest_digest_in_dir, pull_dir
from tests.support.net import http_request
from tests.support.tokens import REGISTRY_LEEWAY

pytestmark = pytest.mark.integration

OWNER = ("owner", "owner-secret")


def test_anonymous_pulls_get_one_pull_token_per_scope_not_one_per_blob(
    token_registry_factory, image_factory, mirror_factory, tmp_path: Path
) -> None:
    upstream = token_registry_factory()
    image = image_factory(
        "library/tokened", layers=(64 * 1024, 32 * 1024, 16 * 1024), registry=upstream
    )
    other = image_factory("library/tokened-too", registry=upstream)
    issuer = upstream.token_issuer
    issuer.reset()
    mirror = mirror_factory(upstream.url)

    pull_dir(image.on(mirror.host), tmp_path / "a")
    pull_dir(other.on(mirror.host), tmp_path / "b")
    pull_dir(image.on(mirror.host), tmp_path / "c")  # tag revalidation reuses the token
    assert manifest_digest_in_dir(tmp_path / "a") == image.digest

    asked = [r.scopes for r in issuer.requests()]
    assert asked == [
        (f"repository:{image.repo}:pull",),
        (f"repository:{other.repo}:pull",),
    ]
    assert all(r.user is None and not r.authorization for r in issuer.requests())
    print(
        f"\ntoken requests for 3 pulls of 2 images ({len(image.blob_digests) + 1} "
        f"upstream objects in the first): {len(asked)}"
    )


def test_configured_credentials_go_to_the_realm_and_open_a_private_repository(
    token_registry_factory, image_factory, mirror_factory, tmp_path: Path
) -> None:
    upstream = token_registry_factory(private={"team/secret"})
    image = image_factory("team/secret", registry=upstream)
    anonymous = mirror_factory(upstream.url)
    denied = http_request("GET", f"{anonymous.url}/v2/{image.repo}/manifests/{image.tag}")
    assert denied.status == 401
    assert json.loads(denied.body)["errors"][0]["code"] == "UNAUTHORIZED"

    upstream.token_issuer.reset()
    mirror = mirror_factory(
        upstream.url, config={"proxy": {"username": OWNER[0], "password": OWNER[1]}}
    )
    pull_dir(image.on(mirror.host), tmp_path / "secret")
    assert manifest_digest_in_dir(tmp_path / "secret") == image.digest
    requests = upstream.token_issuer.requests()
    assert requests and all(r.user == OWNER[0] and r.authenticated for r in requests)
    assert OWNER[1] not in mirror.log_text()


def test_token_rejected_before_its_expiry_is_refreshed_once_and_the_request_retried(
    token_registry_factory, image_factory, mirror_factory
) -> None:
    upstream = token_registry_factory(expires_in=300)
    image = image_factory("library/short-lived", registry=upstream)
    issuer = upstream.token_issuer
    # Tokens say "300 s" but the registry stops taking them about 3 s after issue.
    issuer.clock_skew = -(300 + REGISTRY_LEEWAY) + 3
    issuer.reset()
    mirror = mirror_factory(upstream.url)
    url = f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}"
    assert http_request("GET", url).status == 200
    assert issuer.count() == 1
    time.sleep(4)
    assert http_request("GET", url).status == 200  # 401 → one fresh token → retried
    assert issuer.count() == 2

    issuer.clock_skew = -1000  # every token is dead on arrival now
    time.sleep(4)
    failed = http_request("GET", url)
    # The cached tag answers (stale) only for 5xx/429; a refusal is passed on, once.
    assert failed.status == 401
    assert issuer.count() == 3  # refreshed once, then gave up: no loop


def test_credentials_are_never_sent_to_a_realm_on_another_host(
    token_registry_factory, image_factory, mirror_factory
) -> None:
    upstream = token_registry_factory(host="127.0.0.2")  # realm on another host
    image = image_factory("library/elsewhere", registry=upstream)
    upstream.token_issuer.reset()
    mirror = mirror_factory(
        upstream.url, config={"proxy": {"username": OWNER[0], "password": OWNER[1]}}
    )
    resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
    assert resp.status == 401
    message = json.loads(resp.body)["errors"][0]["message"]
    assert "127.0.0.2" in message and "will not send the configured credentials" in message
    assert upstream.token_issuer.requests() == []
