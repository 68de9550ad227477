"""The outbound policy: an upstream cannot send the mirror to an internal address.

The configured upstream here is on 127.0.0.1 (a lab registry: allowed, with any port of that
host). Every other non-public address is an "internal service" the mirror must not request
unless ``mirror.outbound.allow`` names it: another loopback address, ``localhost`` (a name
that resolves to loopback), IPv6 loopback, an IPv4-mapped IPv6 form, the cloud metadata
address. Each refusal is a 502 with an OCI body, and nothing reached the target.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.scripted import Scripted, challenging, redirecting

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def internal() -> Iterator[dict[str, Scripted]]:
    """Internal services on addresses a redirect must not reach."""
    services = {
        "other-loopback": Scripted(host="127.0.0.2"),
        "localhost": Scripted(host="127.0.0.1"),  # reached as http://localhost:PORT
        "ipv6-loopback": Scripted(host="::1"),
        "mapped": Scripted(host="127.0.0.3"),  # reached as http://[::ffff:127.0.0.3]:PORT
    }
    for service in services.values():
        service.start()
    yield services
    for service in services.values():
        service.stop()


def _targets(internal: dict[str, Scripted]) -> dict[str, str]:
    return {
        "other-loopback": f"{internal['other-loopback'].url}/blob",
        "localhost": f"http://localhost:{internal['localhost'].port}/blob",
        "ipv6-loopback": f"{internal['ipv6-loopback'].url}/blob",
        "mapped": f"http://[::ffff:127.0.0.3]:{internal['mapped'].port}/blob",
        "metadata": "http://169.254.169.254/latest/meta-data/",
    }


def _error(resp_body: bytes) -> dict[str, str]:
    errors: list[dict[str, str]] = json.loads(resp_body)["errors"]
    return errors[0]


@pytest.mark.parametrize(
    "target", ["other-loopback", "localhost", "ipv6-loopback", "mapped", "metadata"]
)
def test_redirect_to_an_internal_address_is_refused_before_connecting(
    internal: dict[str, Scripted], mirror_factory, target: str
) -> None:
    with Scripted(redirecting(_targets(internal))) as hostile:
        mirror: MirrorProcess = mirror_factory(hostile.url)
        for path in (f"/v2/{target}/app/blobs/{DIGEST}", f"/v2/{target}/app/manifests/v1"):
            began = time.monotonic()
            resp = http_request("GET", f"{mirror.url}{path}", timeout=30)
            assert resp.status == 502, resp.body[:300]
            error = _error(resp.body)
            assert error["code"] == "OUTBOUND_REFUSED"
            assert "outbound policy refused the redirect target" in error["message"]
            assert time.monotonic() - began < 2  # refused, not a connect time-out
        assert [r.path for r in hostile.requests][-1].startswith(f"/v2/{target}/")
    for service in internal.values():
        assert service.connections == 0 and service.requests == []
    assert mirror.stored_files() == {}


def test_allow_list_lets_a_redirect_reach_a_named_internal_address(
    internal: dict[str, Scripted], mirror_factory
) -> None:
    """The operator's ``mirror.outbound.allow`` opens exactly what it names."""
    with Scripted(redirecting(_targets(internal))) as hostile:
        mirror = mirror_factory(
            hostile.url, config={"mirror": {"outbound": {"allow": ["127.0.0.2/32"]}}}
        )
        allowed = http_request("GET", f"{mirror.url}/v2/other-loopback/app/manifests/v1")
        still_refused = http_request("GET", f"{mirror.url}/v2/mapped/app/manifests/v1")
    # The allowed address was asked (its answer is no manifest: an error, but one about
    # what that address sent), the other one was not.
    asked = internal["other-loopback"].requests
    assert asked and {r.path for r in asked} == {"/blob"}
    assert allowed.status != 200 and _error(allowed.body)["code"] != "OUTBOUND_REFUSED"
    assert still_refused.status == 502
    assert _error(still_refused.body)["code"] == "OUTBOUND_REFUSED"
    assert internal["mapped"].connections == 0


def test_token_realm_on_another_internal_address_is_refused(
    token_registry_factory, image_factory, mirror_factory
) -> None:
    upstream = token_registry_factory(host="127.0.0.2")  # the realm the registry names
    image = image_factory("library/realm-elsewhere", registry=upstream)
    upstream.token_issuer.reset()
    mirror = mirror_factory(upstream.url)  # anonymous: no credential rule in the way
    resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}")
    assert resp.status == 502, resp.body[:300]
    error = _error(resp.body)
    assert error["code"] == "OUTBOUND_REFUSED"
    assert "token realm" in error["message"] and "127.0.0.2" in error["message"]
    assert upstream.token_issuer.requests() == []


def test_token_realm_at_a_link_local_address_is_refused_without_a_connection(
    mirror_factory,
) -> None:
    realm = 'Bearer realm="http://[fe80::1]/latest/api/token",service="x"'
    with Scripted(challenging(realm)) as hostile:
        mirror = mirror_factory(hostile.url)
        began = time.monotonic()
        resp = http_request("GET", f"{mirror.url}/v2/some/app/manifests/v1", timeout=30)
    assert resp.status == 502
    assert _error(resp.body)["code"] == "OUTBOUND_REFUSED"
    assert time.monotonic() - began < 2


@pytest.mark.parametrize("ns", ["127.0.0.5:{port}", "localhost:{port}", "0.0.0.0"])
def test_adhoc_upstream_on_an_internal_address_is_refused(mirror_factory, ns: str) -> None:
    with Scripted(host="127.0.0.5") as service:
        named = ns.format(port=service.port)
        mirror = mirror_factory(
            "http://127.0.0.1:9", config={"mirror": {"allow_any_upstream": True}}
        )
        answers = [http_request("GET", f"{mirror.url}/v2/org/app/manifests/v1?ns={named}")]
        if ":" not in named:  # a name with a port is no valid path prefix
            answers.append(http_request("GET", f"{mirror.url}/v2/{named}/org/app/manifests/v1"))
    for answer in answers:
        assert answer.status == 404, answer.body[:300]
        error = _error(answer.body)
        assert error["code"] == "NAME_UNKNOWN"
        assert "outbound policy" in error["message"]
    assert service.connections == 0
