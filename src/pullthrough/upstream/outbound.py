"""Where the mirror may connect: one policy for every URL it follows.

Upstream URLs, redirects (a registry's CDN), token realms and ad-hoc upstreams
(``mirror.allow_any_upstream``) all pass the same check, made on the address actually
connected to: a host name is resolved by ``PolicyResolver`` (the connector's resolver), which
drops every address the policy refuses and fails when none is left, so a name that resolves
to an internal address (DNS rebinding) is refused at connect time, not only when the URL is
read. aiohttp connects to an IP literal without asking the resolver; ``Outbound.check_url``
therefore refuses such a literal before any request is made.

Refused unless allowed: loopback, link-local, private (RFC 1918, fc00::/7), shared (CGNAT,
100.64/10), unspecified, reserved and multicast addresses, also when written as IPv4 inside
an IPv6 address (``::ffff:127.0.0.1``, 6to4, NAT64, Teredo). Allowed: public addresses; the
networks and host names of ``mirror.outbound.allow``; and the host a configured upstream's
URL names (any port of it: a lab registry on 127.0.0.1 keeps its token server and storage
on the same host), which the operator chose. An ad-hoc upstream has no such grant.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from pullthrough.errors import OutboundRefused

MAX_REDIRECTS = 5
SCHEMES = ("http", "https")
ALLOW_HINT = "; mirror.outbound.allow can allow it if it is meant to be reached"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, and the deprecated
# IPv4-compatible form): the IPv4 address is where the packets end up.
_EMBEDDING = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)


def parse_address(host: str) -> IPAddress | None:
    """The IP address ``host`` spells (``[::1]`` brackets allowed), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _destinations(address: IPAddress) -> list[IPAddress]:
    """``address`` and every IPv4 address it carries inside."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if any(address in net for net in _EMBEDDING):
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` (and any IPv4 address inside it) is a public unicast address."""
    return all(a.is_global and not a.is_multicast for a in _destinations(address))


def _host_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """``mirror.outbound.allow``: networks and host names the mirror may connect to although
    they are not public. Empty: public addresses only (plus each configured upstream's host)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OutboundPolicy:
        """From config entries: a CIDR or IP address (``10.0.0.0/8``, ``fd00::1``) or a
        host name (``registry.lab``). Raises ValueError naming an entry that is neither."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _host_name(text)
            if not name or not all(c.isalnum() or c in ".-_" for c in name):
                raise ValueError(f"{entry!r} is neither a CIDR, an IP address nor a host name")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def allows_address(self, address: IPAddress) -> bool:
        if is_public(address):
            return True
        forms = {address, _unmapped(address)}
        return any(a.version == net.version and a in net for a in forms for net in self.networks)

    def for_upstream(self, url: str | None) -> Outbound:
        """The policy as one upstream client applies it: ``url`` is a configured upstream's
        URL (its host is trusted), or None for an ad-hoc upstream (nothing more trusted)."""
        return Outbound(self, urlsplit(url).hostname if url else None)


class Outbound:
    """The outbound policy as one upstream client applies it (see the module docstring)."""

    def __init__(self, policy: OutboundPolicy, own_host: str | None) -> None:
        self.policy = policy
        self._own_name = _host_name(own_host) if own_host else None
        self._own_address = _unmapped_or_none(parse_address(own_host) if own_host else None)

    def trusts_host(self, host: str) -> bool:
        """Whether ``host`` may resolve to anything: the configured upstream's own host, or
        a host name on the allow-list."""
        name = _host_name(host)
        if name == self._own_name or name in self.policy.hosts:
            return True
        address = parse_address(host)
        return address is not None and _unmapped(address) == self._own_address

    def refusal(self, url: str) -> str | None:
        """Why the mirror must not request ``url`` (its scheme, or an IP literal or
        ``localhost`` the policy refuses), or None when only the addresses its host resolves
        to remain to be checked (by ``PolicyResolver``, at connect time)."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            return f"a non-HTTP URL ({parts.scheme or 'no scheme'}:) is never followed"
        try:
            host = parts.hostname
            parts.port  # noqa: B018 - a bad port raises here, not in the connector
        except ValueError:
            return "not a valid URL"
        if not host:
            return "the URL names no host"
        if self.trusts_host(host):
            return None
        name = _host_name(host)
        if name == "localhost" or name.endswith(".localhost"):
            return f"{host} is this machine (a loopback address){ALLOW_HINT}"
        address = parse_address(host)
        if address is not None and not self.policy.allows_address(address):
            return f"{address} is {_kind(address)}{ALLOW_HINT}"
        return None

    def check_url(self, url: str, what: str) -> None:
        """Raise OutboundRefused when ``url`` (the ``what``: upstream, redirect target,
        token realm) must not be requested."""
        reason = self.refusal(url)
        if reason is not None:
            raise OutboundRefused(f"outbound policy refused the {what} {origin_of(url)}: {reason}")

    def keep(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        """The resolved addresses of ``host`` the mirror may connect to; OutboundRefused
        when none is left."""
        if self.trusts_host(host):
            return results
        kept = [r for r in results if self._allowed(r["host"])]
        if not kept:
            seen = ", ".join(sorted({r["host"] for r in results})) or "nothing"
            raise OutboundRefused(
                f"outbound policy refused a connection to {host[:200]}: it resolves to "
                f"{seen[:200]}, no public address{ALLOW_HINT}"
            )
        return kept

    def _allowed(self, host: str) -> bool:
        address = parse_address(host.split("%", 1)[0])  # drop an IPv6 zone index
        return address is not None and self.policy.allows_address(address)


def _unmapped_or_none(address: IPAddress | None) -> IPAddress | None:
    return None if address is None else _unmapped(address)


def _kind(address: IPAddress) -> str:
    a = _unmapped(address)
    if a.is_loopback:
        return "a loopback address"
    if a.is_link_local:
        return "a link-local address"
    if a.is_unspecified:
        return "the unspecified address"
    if a.is_multicast:
        return "a multicast address"
    if a.is_private:
        return "a private address"
    return "not a public address"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, for messages (never its path or query: a CDN
    URL's query carries its signature)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"[:200] if parts.netloc else url[:60]


class PolicyResolver(AbstractResolver):
    """The connector's resolver: resolves with ``inner`` (aiohttp's default when None), then
    keeps only the addresses ``outbound`` allows, so what is connected to is what was
    checked."""

    def __init__(self, outbound: Outbound, inner: AbstractResolver | None = None) -> None:
        self._outbound = outbound
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return self._outbound.keep(host, await self._inner.resolve(host, port, family))

    async def close(self) -> None:
        await self._inner.close()
