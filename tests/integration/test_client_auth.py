"""Client authentication on the mirror itself: ``auth.htpasswd`` and ``auth.token``, and the
start-up refusal of upstream credentials without client auth on a public address."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.support.images import manifest_digest_in_dir, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, http_request
from tests.support.proxy import RecordingProxy
from tests.support.regclient import fetch_token
from tests.support.tokens import TokenIssuer

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")


def _htpasswd(path: Path, *users: tuple[str, str]) -> None:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=6)).decode()}" for u, p in users
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def basic_mirror(mirror_factory, upstream_proxy: RecordingProxy, tmp_path: Path):
    users = tmp_path / "htpasswd"
    _htpasswd(users, ALICE)
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"auth": {"htpasswd": {"realm": "pullthrough-test", "path": str(users)}}},
    )
    return mirror, users


def test_htpasswd_challenges_and_lets_skopeo_pull_with_credentials(
    basic_mirror, images, tmp_path: Path
) -> None:
    mirror, _ = basic_mirror
    anonymous = http_request("GET", f"{mirror.url}/v2/")
    assert anonymous.status == 401
    assert anonymous.header("WWW-Authenticate") == 'Basic realm="pullthrough-test"'
    assert json.loads(anonymous.body)["errors"][0]["code"] == "UNAUTHORIZED"
    wrong = http_request("GET", f"{mirror.url}/v2/", auth=(ALICE[0], "nope"))
    assert wrong.status == 401
    blob = next(iter(images.oci_small.blob_digests))
    assert http_request("GET", f"{mirror.url}/v2/library/oci-small/blobs/{blob}").status == 401

    pull_dir(images.oci_small.on(mirror.host), tmp_path / "ok", creds=ALICE)
    assert manifest_digest_in_dir(tmp_path / "ok") == images.oci_small.digest
    refused = pull_dir(images.oci_small.on(mirror.host), tmp_path / "no", creds=BOB, check=False)
    assert refused.returncode != 0
    log = mirror.log_text()
    assert ALICE[1] not in log and BOB[1] not in log


def test_htpasswd_file_is_reread_when_it_changes(basic_mirror) -> None:
    mirror, users = basic_mirror
    assert http_request("GET", f"{mirror.url}/v2/", auth=BOB).status == 401
    _htpasswd(users, ALICE, BOB)
    deadline = time.monotonic() + 10
    while http_request("GET", f"{mirror.url}/v2/", auth=BOB).status != 200:
        assert time.monotonic() < deadline, "the new user was never accepted"
        time.sleep(0.2)
    _htpasswd(users, BOB)  # alice removed
    deadline = time.monotonic() + 10
    while http_request("GET", f"{mirror.url}/v2/", auth=ALICE).status != 401:
        assert time.monotonic() < deadline, "the removed user is still accepted"
        time.sleep(0.2)


def test_non_bcrypt_htpasswd_entries_stop_start_up(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    users.write_text("carol:$apr1$abcdefgh$0123456789abcdefghijkl\n")  # MD5: not accepted
    config = tmp_path / "config.yml"
    config.write_text(f"auth: {{htpasswd: {{realm: r, path: {users}}}}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pullthrough", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "auth.htpasswd.path" in result.stderr and "not bcrypt" in result.stderr


def _token_auth(issuer: TokenIssuer) -> dict[str, object]:
    """The mirror's ``auth:`` section for clients of ``issuer``."""
    return {
        "token": {
            "realm": issuer.url,
            "service": issuer.service,
            "issuer": issuer.issuer,
            "rootcertbundle": str(issuer.cert_path),
        }
    }


@pytest.fixture
def client_issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(
        service="pullthrough-mirror",
        issuer="mirror-token-issuer",
        users=dict([ALICE]),
        private={"library/schema2"},
        root=tmp_path / "client-issuer",
    )
    issuer.start()
    yield issuer
    issuer.stop()


def test_token_auth_verifies_signature_issuer_audience_expiry_and_access(
    client_issuer: TokenIssuer, mirror_factory, upstream_proxy, images, tmp_path: Path
) -> None:
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url,
        config={"auth": _token_auth(client_issuer)},
    )
    probe = http_request("GET", f"{mirror.url}/v2/library/oci-small/manifests/v1")
    assert probe.status == 401
    challenge = probe.header("WWW-Authenticate") or ""
    assert challenge.startswith(f'Bearer realm="{client_issuer.url}"')
    assert 'scope="repository:library/oci-small:pull"' in challenge

    # skopeo runs the whole Bearer flow against the mirror's token service.
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "anon")
    assert manifest_digest_in_dir(tmp_path / "anon") == images.oci_small.digest
    denied = pull_dir(images.schema2.on(mirror.host), tmp_path / "private", check=False)
    assert denied.returncode != 0  # private for anonymous users
    pull_dir(images.schema2.on(mirror.host), tmp_path / "authed", creds=ALICE)

    def get(path: str, token: str) -> int:
        return http_request(
            "GET", f"{mirror.url}{path}", headers={"Authorization": f"Bearer {token}"}
        ).status

    small = fetch_token(
        client_issuer.url,
        service=client_issuer.service,
        scopes=["repository:library/oci-small:pull"],
    )
    assert get("/v2/library/oci-small/manifests/v1", small) == 200
    assert get("/v2/library/multi/manifests/v1", small) == 401  # not its repository
    client_issuer.service = "someone-else"  # a token meant for another registry
    other_service = fetch_token(
        client_issuer.url, service="someone-else", scopes=["repository:library/oci-small:pull"]
    )
    client_issuer.service = "pullthrough-mirror"
    assert get("/v2/library/oci-small/manifests/v1", other_service) == 401
    assert get("/v2/library/oci-small/manifests/v1", small[:-4] + "AAAA") == 401  # bad signature
    client_issuer.clock_skew = -3600  # tokens expired an hour ago (beyond the 60 s leeway)
    stale = fetch_token(
        client_issuer.url,
        service=client_issuer.service,
        scopes=["repository:library/oci-small:pull"],
    )
    assert get("/v2/library/oci-small/manifests/v1", stale) == 401


def test_a_client_allowed_only_b_cannot_read_a_private_blob_through_bs_name(
    token_registry_factory, image_factory, client_issuer: TokenIssuer, mirror_factory
) -> None:
    upstream = token_registry_factory(private={"team/a"})  # owner may read team/a; anyone team/b
    private_a = image_factory("team/a", registry=upstream)
    public_b = image_factory("team/b", registry=upstream)
    owner = upstream.creds
    mirror = mirror_factory(
        upstream.url,
        config={
            "proxy": {"username": owner[0], "password": owner[1]},
            "auth": _token_auth(client_issuer),
        },
    )

    def token(*repos: str, creds: tuple[str, str] | None = None) -> dict[str, str]:
        value = fetch_token(
            client_issuer.url,
            service=client_issuer.service,
            scopes=[f"repository:{r}:pull" for r in repos],
            creds=creds,
        )
        return {"Authorization": f"Bearer {value}"}

    a_layer = private_a.source.layer_digests[0]
    # Someone allowed to read team/a pulls its layer: now it is in the store.
    got = http_request(
        "GET", f"{mirror.url}/v2/team/a/blobs/{a_layer}", headers=token("team/a", creds=ALICE)
    )
    assert got.status == 200
    manifest = http_request(
        "GET",
        f"{mirror.url}/v2/team/a/manifests/{private_a.tag}",
        headers=token("team/a", creds=ALICE),
    )
    assert manifest.status == 200
    assert {a_layer, private_a.digest} <= set(mirror.stored_files())

    only_b = token("team/b")
    assert (
        http_request("GET", f"{mirror.url}/v2/team/a/blobs/{a_layer}", headers=only_b).status == 401
    )
    leak = http_request("GET", f"{mirror.url}/v2/team/b/blobs/{a_layer}", headers=only_b)
    assert leak.status == 404
    assert json.loads(leak.body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    manifest_leak = http_request(
        "GET", f"{mirror.url}/v2/team/b/manifests/{private_a.digest}", headers=only_b
    )
    assert manifest_leak.status == 404
    # B's own content is fine.
    b_layer = public_b.source.layer_digests[0]
    assert (
        http_request("GET", f"{mirror.url}/v2/team/b/blobs/{b_layer}", headers=only_b).status == 200
    )
