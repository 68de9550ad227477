"""``mirror.access``: which htpasswd users may pull which repositories, however they name them.

The mirror runs with ``auth.htpasswd`` (alice, bob) in front of the real upstream registry.
Everyone may pull ``oci-small``; only alice may pull ``library/schema2`` and ``library/multi``.
"""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest

from tests.support.images import manifest_digest_in_dir, pull_dir
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")


@pytest.fixture
def acl_mirror(mirror_factory, upstream_proxy: RecordingProxy, tmp_path: Path):
    users = tmp_path / "htpasswd"
    users.write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=6)).decode()}\n"
        for u, p in (ALICE, BOB)
    ))
    return mirror_factory(upstream_proxy.url, config={
        "auth": {"htpasswd": {"realm": "pullthrough-test", "path": str(users)}},
        "mirror": {"access": [
            {"repositories": ["oci-small"]},
            {"repositories": ["library/schema2", "library/multi"], "users": ["alice"]},
        ]},
    })


def _error(response) -> dict[str, str]:
    return json.loads(response.body)["errors"][0]


def test_users_pull_only_what_the_rules_allow(
    acl_mirror, images, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    mirror = acl_mirror
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "bob-small", creds=BOB)
    assert manifest_digest_in_dir(tmp_path / "bob-small") == images.oci_small.digest

    upstream_proxy.reset()
    blob = next(iter(images.schema2.blob_digests))
    # However bob names alice's repository (default upstream, path prefix, ?ns=), it is denied.
    for path in (
        "/v2/library/schema2/manifests/v1",
        f"/v2/library/schema2/manifests/{images.schema2.digest}",
        "/v2/docker.io/library/schema2/manifests/v1",
        "/v2/library/schema2/manifests/v1?ns=docker.io",
        f"/v2/library/schema2/blobs/{blob}",
        "/v2/library/schema2/tags/list",
    ):
        for method in ("GET", "HEAD"):
            got = http_request(method, mirror.url + path, auth=BOB)
            assert got.status == 403, (method, path, got.status)
            if method == "GET":
                assert _error(got)["code"] == "DENIED"
                assert "user bob may not pull docker.io/library/schema2" in _error(got)["message"]
    assert upstream_proxy.count() == 0, "a denied request reached the upstream"

    refused = pull_dir(images.schema2.on(mirror.host), tmp_path / "bob-s2", creds=BOB,
                       check=False)
    assert refused.returncode != 0 and "denied" in refused.stderr.lower()
    assert not (tmp_path / "bob-s2" / "manifest.json").exists()

    pull_dir(images.schema2.on(mirror.host), tmp_path / "alice-s2", creds=ALICE)
    assert manifest_digest_in_dir(tmp_path / "alice-s2") == images.schema2.digest
    # Cached now, and still not bob's: the store is shared, the rules are per request.
    assert http_request("GET", f"{mirror.url}/v2/library/schema2/blobs/{blob}",
                        auth=BOB).status == 403

    # The catalog names only what the asking user may pull.
    def catalog(creds: tuple[str, str]) -> list[str]:
        got = http_request("GET", f"{mirror.url}/v2/_catalog", auth=creds)
        assert got.status == 200
        return list(json.loads(got.body)["repositories"])

    assert catalog(BOB) == ["library/oci-small"]
    assert catalog(ALICE) == ["library/oci-small", "library/schema2"]
    # Authentication still comes first: no credentials is 401, not 403.
    assert http_request("GET", f"{mirror.url}/v2/library/oci-small/tags/list").status == 401


def test_anonymous_mirror_proxies_only_the_listed_repositories(
    mirror_factory, upstream_proxy: RecordingProxy, images, tmp_path: Path
) -> None:
    """Without ``auth:``, rules without users turn the mirror into an allow-list."""
    mirror = mirror_factory(upstream_proxy.url, config={
        "mirror": {"access": [{"repositories": ["library/oci-*"]}]},
    })
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "small")
    assert manifest_digest_in_dir(tmp_path / "small") == images.oci_small.digest
    upstream_proxy.reset()
    got = http_request("GET", f"{mirror.url}/v2/library/multi/manifests/v1")
    assert got.status == 403
    assert "an anonymous client may not pull docker.io/library/multi" in _error(got)["message"]
    assert upstream_proxy.count() == 0
