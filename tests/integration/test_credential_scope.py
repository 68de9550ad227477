"""Where an upstream's credentials go: to the upstream's origin and to the token realm the
upstream's own challenge names (on its host or registrable domain), nowhere else.

A redirect target (a CDN) that answers 401 with a challenge of its own is not the upstream:
neither the Basic credentials nor a token obtained with them go to it or to the realm it
names, even when that realm is on the upstream's host (here all of them are on 127.0.0.1,
where the registrable-domain rule alone would let the credentials through).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.net import http_request
from tests.support.scripted import Answer, Scripted, issuing

pytestmark = pytest.mark.integration

USER, PASSWORD = "mirror-bot", "cdn-must-not-see-this"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "upstream-token"
DIGEST = "sha256:" + "cd" * 32


@dataclass
class Scene:
    upstream: Scripted  # Bearer auth with its own realm; blobs redirect to the CDN
    realm: Scripted  # the upstream's token realm: issues TOKEN
    cdn: Scripted  # answers 401 with a challenge of its own
    cdn_realm: Scripted  # the realm the CDN names (issues its own token)


@pytest.fixture(params=["bearer", "basic"])
def scene(request: pytest.FixtureRequest) -> Iterator[Scene]:
    s = Scene(Scripted(), Scripted(issuing(TOKEN)), Scripted(), Scripted(issuing("cdn-token")))

    def upstream(method: str, path: str) -> Answer:
        if path.split("?", 1)[0] == "/v2/":
            return 200, {}, b""
        auth = s.upstream.requests[-1].authorization
        if auth != f"Bearer {TOKEN}":
            challenge = f'Bearer realm="{s.realm.url}/token",service="upstream"'
            return 401, {"WWW-Authenticate": challenge}, b""
        if "/blobs/" in path:
            return 307, {"Location": f"{s.cdn.url}/cdn/{DIGEST}?sig=abc"}, b""
        return 404, {"Content-Type": "application/json"}, b'{"errors":[]}'

    cdn_challenge = (
        f'Bearer realm="{s.cdn_realm.url}/token",service="cdn"'
        if request.param == "bearer"
        else 'Basic realm="cdn"'
    )
    s.upstream.script = upstream
    s.cdn.script = lambda method, path: (401, {"WWW-Authenticate": cdn_challenge}, b"")
    for server in (s.upstream, s.realm, s.cdn, s.cdn_realm):
        server.start()
    yield s
    for server in (s.upstream, s.realm, s.cdn, s.cdn_realm):
        server.stop()


def test_a_redirect_targets_challenge_never_gets_the_upstreams_credentials(
    scene: Scene, mirror_factory
) -> None:
    mirror = mirror_factory(
        scene.upstream.url, config={"proxy": {"username": USER, "password": PASSWORD}}
    )
    # A first request gets the upstream's token, so the CDN's 401 is the first one the
    # blob request meets (the one the mirror would answer).
    first = http_request("GET", f"{mirror.url}/v2/team/app/manifests/v1", timeout=30)
    assert first.status == 404, first.body[:300]
    resp = http_request("GET", f"{mirror.url}/v2/team/app/blobs/{DIGEST}", timeout=30)

    # The credentials were in play: the upstream's own realm got them, the upstream the token.
    assert BASIC in [r.authorization for r in scene.realm.requests]
    assert f"Bearer {TOKEN}" in [r.authorization for r in scene.upstream.requests]
    # The CDN and the realm it named saw neither the credentials nor the token.
    assert scene.cdn.requests, "the redirect was followed"
    for server in (scene.cdn, scene.cdn_realm):
        seen = [r.authorization for r in server.requests]
        assert BASIC not in seen and f"Bearer {TOKEN}" not in seen
        assert all(a is None for a in seen), seen
    assert PASSWORD not in mirror.log_text()
    # The client is told why: the upstream sent the mirror somewhere that wants credentials.
    assert resp.status == 502, resp.body[:300]
    error = json.loads(resp.body)["errors"][0]
    assert error["code"] == "UPSTREAM_INVALID"
    assert "asked for credentials" in error["message"]
