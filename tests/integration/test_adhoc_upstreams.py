"""Ad-hoc upstreams (``mirror.allow_any_upstream``): slots are bounded, given back once
idle, and taken only by clients authorized to pull.

The registries named here are loopback addresses on a closed port (``mirror.outbound.allow``
lets the mirror try them): asking one fails at once, without leaving this machine, and
still takes a slot, which is what these tests watch through ``/debug/health``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.support.mirror import MirrorProcess
from tests.support.net import free_port, http_request

pytestmark = pytest.mark.integration

CLOSED = 1  # tcpmux: nothing listens there on a test machine


def _mirror(mirror_factory, extra: dict[str, Any]) -> tuple[MirrorProcess, str]:
    port = free_port()
    config: dict[str, Any] = {
        "http": {"debug": {"addr": f"127.0.0.1:{port}"}},
        "mirror": {
            "allow_any_upstream": True,
            "outbound": {"allow": ["127.0.0.0/8"]},
            **extra.pop("mirror", {}),
        },
        **extra,
    }
    return mirror_factory("http://127.0.0.1:9", config=config), f"http://127.0.0.1:{port}"


def _upstreams(debug: str) -> set[str]:
    doc = json.loads(http_request("GET", f"{debug}/debug/health").body)
    return set(doc["checks"]["upstreams"])


def _pull(mirror: MirrorProcess, ns: str, **kwargs: Any) -> tuple[int, dict[str, str]]:
    resp = http_request("GET", f"{mirror.url}/v2/org/app/manifests/v1?ns={ns}", **kwargs)
    errors = json.loads(resp.body).get("errors") or [{}]
    return resp.status, errors[0]


def test_idle_adhoc_slots_are_given_back(mirror_factory) -> None:
    mirror, debug = _mirror(
        mirror_factory, {"mirror": {"adhoc_upstreams": {"max": 2, "idle": "1s"}}}
    )
    first, second, third = (f"127.0.0.{n}:{CLOSED}" for n in (2, 3, 4))
    for ns in (first, second):
        status, error = _pull(mirror, ns)
        assert error.get("code") != "NAME_UNKNOWN", error  # a slot was made and tried
    assert {first, second} <= _upstreams(debug)

    status, error = _pull(mirror, third)
    assert status == 404 and error["code"] == "NAME_UNKNOWN"
    assert "ad-hoc upstream slots are in use" in error["message"]
    assert third not in _upstreams(debug)

    deadline = time.monotonic() + 10
    while {first, second} & _upstreams(debug) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not {first, second} & _upstreams(debug)  # given back without a new request
    status, error = _pull(mirror, third)
    assert error.get("code") != "NAME_UNKNOWN", error
    assert third in _upstreams(debug)


def test_an_unauthenticated_request_takes_no_adhoc_slot(mirror_factory, tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"alice-secret", bcrypt.gensalt(rounds=6)).decode()
    users.write_text(f"alice:{hashed}\n")
    mirror, debug = _mirror(
        mirror_factory,
        {
            "auth": {"htpasswd": {"realm": "test", "path": str(users)}},
            "mirror": {"adhoc_upstreams": {"max": 1}},
        },
    )
    for n in range(2, 6):
        status, _ = _pull(mirror, f"127.0.0.{n}:{CLOSED}")
        assert status == 401
    assert _upstreams(debug) == {"docker.io"}

    # The one slot is still free for a client that may pull.
    ns = f"127.0.0.9:{CLOSED}"
    status, error = _pull(mirror, ns, auth=("alice", "alice-secret"))
    assert error.get("code") not in ("NAME_UNKNOWN", "UNAUTHORIZED"), error
    assert _upstreams(debug) == {"docker.io", ns}
