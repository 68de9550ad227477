"""Password checks for ``auth.htpasswd`` against a real ``pullthrough serve``: failed logins
are limited per user and per client address and refused before bcrypt runs; a password
bcrypt cannot take (over 72 bytes) is a wrong password, not a 500.

Requests come from several loopback source addresses (127.0.x.y) so that the user's limit
and the address's limit can be told apart; everything stays on loopback.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from pullthrough.clientauth.throttle import PER_ADDRESS, PER_USER
from tests.support.mirror import MirrorProcess
from tests.support.net import HTTPResponse, basic_auth_header

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")
CAROL = ("carol", "carol-secret-3")
FAILED = "login failed for user"  # the mirror's log line for each password it hashed and refused


def _htpasswd(path: Path, *users: tuple[str, str]) -> None:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=6)).decode()}" for u, p in users
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def mirror(mirror_factory, upstream_proxy, tmp_path: Path) -> MirrorProcess:
    users = tmp_path / "htpasswd"
    _htpasswd(users, ALICE, BOB, CAROL)
    return mirror_factory(
        upstream_proxy.url,
        config={"auth": {"htpasswd": {"realm": "pullthrough-test", "path": str(users)}}},
    )


def _get(
    mirror: MirrorProcess,
    path: str = "/v2/",
    *,
    auth: tuple[str, str],
    source: str = "127.0.0.1",
) -> HTTPResponse:
    """One GET with Basic credentials, sent from the loopback address ``source``."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", mirror.port, timeout=20, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers={"Authorization": basic_auth_header(*auth)})
        resp = conn.getresponse()
        return HTTPResponse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def _error(resp: HTTPResponse) -> dict[str, Any]:
    errors = json.loads(resp.body)["errors"]
    assert len(errors) == 1
    return dict(errors[0])


def _hashed_failures(mirror: MirrorProcess) -> int:
    return mirror.log_text().count(FAILED)


def _assert_refused(resp: HTTPResponse, because: str) -> None:
    assert resp.status == 429, resp.body
    error = _error(resp)
    assert error["code"] == "TOOMANYREQUESTS"
    assert because in error["message"]
    assert int(resp.header("Retry-After") or "0") >= 1


def test_a_password_over_72_bytes_is_answered_like_any_wrong_password(
    mirror: MirrorProcess,
) -> None:
    # bcrypt 4.1+ raises for more than 72 bytes: that was a 500 with a traceback, and only
    # for users that exist. Now every user gets the same 401.
    for user in (ALICE[0], "nobody"):
        for password in ("p" * 73, "é" * 37, ALICE[1] + "x" * 72):  # 73, 74 and 86 bytes
            resp = _get(mirror, auth=(user, password))
            assert resp.status == 401, (user, len(password.encode()), resp.body)
            assert _error(resp)["code"] == "UNAUTHORIZED"
            assert resp.header("WWW-Authenticate") == 'Basic realm="pullthrough-test"'
    log = mirror.log_text()
    assert "Traceback" not in log and "unexpected error" not in log
    assert _get(mirror, auth=ALICE).status == 200  # and she still logs in


def test_wrong_passwords_for_one_user_are_refused_before_bcrypt_once_over_the_limit(
    mirror: MirrorProcess,
) -> None:
    assert _get(mirror, auth=ALICE, source="127.0.1.200").status == 200  # remembered from now on
    # Each guess from another address: the user's own limit, not an address's.
    limit = PER_USER.burst
    for i in range(limit):
        wrong = _get(mirror, auth=(ALICE[0], f"guess-{i}"), source=f"127.0.1.{i + 1}")
        assert wrong.status == 401, (i, wrong.body)
    for i in range(limit, limit + 5):
        refused = _get(mirror, auth=(ALICE[0], f"guess-{i}"), source=f"127.0.1.{i + 1}")
        _assert_refused(refused, "for this user")
    assert _hashed_failures(mirror) == limit  # the refused guesses never reached bcrypt

    # A name that does not exist is limited the same way: the limit tells nothing about who
    # exists.
    answers = [
        _get(mirror, auth=("nobody", f"guess-{i}"), source=f"127.0.2.{i + 1}").status
        for i in range(limit + 2)
    ]
    assert answers == [401] * limit + [429, 429]

    # Alice, whose password was verified before, still gets in; so does another user.
    assert _get(mirror, auth=ALICE, source="127.0.1.200").status == 200
    assert _get(mirror, auth=BOB, source="127.0.3.1").status == 200


def test_wrong_passwords_from_one_address_are_refused_before_bcrypt_once_over_the_limit(
    mirror: MirrorProcess,
) -> None:
    limit = PER_ADDRESS.burst
    # A different name each time: no user's own limit is reached, only the address's.
    for i in range(limit):
        assert _get(mirror, auth=(f"user{i}", "guess"), source="127.0.4.1").status == 401
    for i in range(limit, limit + 5):
        _assert_refused(
            _get(mirror, auth=(f"user{i}", "guess"), source="127.0.4.1"), "from this address"
        )
    assert _hashed_failures(mirror) == limit
    # Another address with the right password is not held up.
    assert _get(mirror, auth=BOB, source="127.0.4.2").status == 200


def test_a_flood_of_wrong_passwords_leaves_another_users_cached_pull_working(
    mirror: MirrorProcess, images
) -> None:
    image = images.oci_small
    blob = next(iter(image.blob_digests))
    blob_path = f"/v2/library/oci-small/blobs/{blob}"
    manifest_path = f"/v2/library/oci-small/manifests/{image.digest}"
    # Bob pulls once: the blob and manifest are cached and his password remembered.
    assert _get(mirror, blob_path, auth=BOB).status == 200
    assert _get(mirror, manifest_path, auth=BOB).status == 200

    flood = 100
    with ThreadPoolExecutor(max_workers=flood + 8) as pool:
        guesses = [pool.submit(_get, mirror, auth=(ALICE[0], f"guess-{i}")) for i in range(flood)]
        # During the flood, from the flood's own address: Bob's cached pull ...
        pulls = [
            pool.submit(_get, mirror, path, auth=BOB)
            for _ in range(3)
            for path in (blob_path, manifest_path)
        ]
        # ... and Carol logging in for the first time, from elsewhere.
        carol = pool.submit(_get, mirror, auth=CAROL, source="127.0.5.1")
        answers = [g.result(timeout=60) for g in guesses]
        pulled = [p.result(timeout=60) for p in pulls]
        carol_answer = carol.result(timeout=60)

    for resp in pulled:
        assert resp.status == 200, resp.body
    assert hashlib.sha256(pulled[0].body).hexdigest() == blob.split(":", 1)[1]
    assert carol_answer.status == 200, carol_answer.body

    statuses = [a.status for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    hashed = statuses.count(401)
    # The limit is reached after PER_USER.burst guesses (one more may have refilled).
    assert hashed <= PER_USER.burst + 1, statuses
    for refused in (a for a in answers if a.status == 429):
        _assert_refused(refused, "for this user")
    assert _hashed_failures(mirror) == hashed  # bcrypt ran only for the guesses answered 401
