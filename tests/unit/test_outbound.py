"""The outbound policy on its own, and on the address an upstream client actually connects
to (names resolved by a stub resolver, servers on loopback)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from pullthrough.config import ConfigError, UpstreamConfig, load
from pullthrough.errors import OutboundRefused
from pullthrough.upstream.client import UpstreamClient
from pullthrough.upstream.outbound import OutboundPolicy, is_public
from tests.support.scripted import Scripted, redirecting

DIGEST = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # CGNAT
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::1", False),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 around 169.254.169.254
        ("::127.0.0.1", False),  # IPv4-compatible
    ],
)
def test_only_public_addresses_pass_without_an_allow_list(address: str, public: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert is_public(ip) is public
    assert OutboundPolicy().allows_address(ip) is public


def test_allow_list_opens_networks_and_host_names() -> None:
    policy = OutboundPolicy.parse(["10.0.0.0/8", "127.0.0.2", "Registry.Lab."])
    assert policy.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert policy.allows_address(ipaddress.ip_address("::ffff:10.9.8.7"))
    assert policy.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert not policy.allows_address(ipaddress.ip_address("127.0.0.3"))
    assert policy.hosts == frozenset({"registry.lab"})
    with pytest.raises(ValueError):
        OutboundPolicy.parse(["not a host/32"])


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:5000/v2/", False),  # the configured upstream's own host
        ("http://127.0.0.1:9999/token", False),  # any port of it
        ("http://127.0.0.2:5000/", True),
        ("http://localhost:5000/", True),  # the same machine by another name
        ("http://app.localhost/", True),
        ("http://[::1]:5000/", True),
        ("http://[::ffff:127.0.0.2]:5000/", True),
        ("http://169.254.169.254/latest/meta-data/", True),
        ("http://10.0.0.1/", True),
        ("https://registry-1.docker.io/v2/", False),  # a name: checked when resolved
        ("file:///etc/passwd", True),
        ("ftp://8.8.8.8/", True),
    ],
)
def test_urls_refused_before_any_lookup(url: str, refused: bool) -> None:
    outbound = OutboundPolicy().for_upstream("http://127.0.0.1:5000")
    assert (outbound.refusal(url) is not None) is refused


def test_an_adhoc_upstream_trusts_no_host() -> None:
    outbound = OutboundPolicy().for_upstream(None)
    assert outbound.refusal("https://127.0.0.1:5000/v2/") is not None
    assert outbound.refusal("https://ghcr.io/v2/") is None


def test_allow_list_entry_is_checked_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("mirror:\n  outbound:\n    allow: [10.0.0.0/8, registry.lab, 'a b']\n")
    with pytest.raises(ConfigError, match=r"mirror\.outbound\.allow\[2\]"):
        load(config, environ={})
    config.write_text("mirror:\n  outbound:\n    allow: [10.0.0.0/8, registry.lab]\n")
    assert load(config, environ={}).outbound_allow == ("10.0.0.0/8", "registry.lab")


# --- on the connection ------------------------------------------------------------------


class StubResolver(AbstractResolver):
    """Resolves the names of ``table`` (and nothing else) to the addresses given."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"stub resolver: no such name {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def services() -> Iterator[tuple[Scripted, Scripted]]:
    """Two servers on one port: 127.0.0.2 (internal) and 127.0.0.3 (allowed by tests)."""
    internal = Scripted(host="127.0.0.2")
    allowed = Scripted(host="127.0.0.3")
    allowed.port = internal.port
    internal.start()
    allowed.start()
    yield internal, allowed
    internal.stop()
    allowed.stop()


def _client(upstream: str, policy: OutboundPolicy, resolver: StubResolver) -> UpstreamClient:
    config = UpstreamConfig(name="lab", url=upstream, connect_timeout=2.0, read_timeout=5.0)
    return UpstreamClient(config, outbound=policy.for_upstream(upstream), resolver=resolver)


async def test_a_name_resolving_to_an_internal_address_is_refused_when_connecting(
    services: tuple[Scripted, Scripted],
) -> None:
    internal, _ = services
    target = f"http://cdn.rebind.test:{internal.port}/blob"
    resolver = StubResolver({"cdn.rebind.test": ["127.0.0.2"]})
    with Scripted(redirecting({"app": target})) as hostile:
        client = _client(hostile.url, OutboundPolicy(), resolver)
        # The URL alone passes (a name); what it resolves to does not.
        assert client.outbound.refusal(target) is None
        try:
            with pytest.raises(OutboundRefused, match="resolves to 127.0.0.2"):
                await client.head_blob("app", DIGEST)
        finally:
            await client.close()
    assert resolver.asked == ["cdn.rebind.test"]
    assert internal.connections == 0


async def test_only_the_allowed_addresses_of_a_name_are_connected_to(
    services: tuple[Scripted, Scripted],
) -> None:
    internal, allowed = services
    target = f"http://cdn.rebind.test:{internal.port}/blob"
    resolver = StubResolver({"cdn.rebind.test": ["127.0.0.2", "127.0.0.3"]})
    with Scripted(redirecting({"app": target})) as hostile:
        client = _client(hostile.url, OutboundPolicy.parse(["127.0.0.3/32"]), resolver)
        try:
            assert await client.head_blob("app", DIGEST) is not None
        finally:
            await client.close()
    assert [r.path for r in allowed.requests] == ["/blob"]
    assert internal.connections == 0


async def test_an_ip_literal_is_refused_although_the_resolver_never_sees_it(
    services: tuple[Scripted, Scripted],
) -> None:
    internal, _ = services
    resolver = StubResolver({})
    with Scripted(redirecting({"app": f"{internal.url}/blob"})) as hostile:
        client = _client(hostile.url, OutboundPolicy(), resolver)
        try:
            with pytest.raises(OutboundRefused, match="127.0.0.2 is a loopback address"):
                await client.head_blob("app", DIGEST)
        finally:
            await client.close()
    assert resolver.asked == []  # aiohttp connects to literals without a lookup
    assert internal.connections == 0
