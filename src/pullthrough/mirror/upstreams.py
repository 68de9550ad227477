"""The registries this mirror pulls from, found by the names clients use for them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from pullthrough.config import DOCKER_HUB_NAME, Config, UpstreamConfig
from pullthrough.metrics import Metrics
from pullthrough.upstream.client import UpstreamClient
from pullthrough.upstream.outbound import OutboundPolicy

DOCKER_HUB_ALIASES = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")
# With allow_any_upstream, clients for hosts nobody configured are made on demand; this
# many at most, so a client inventing names cannot grow the table without end.
MAX_ADHOC = 64


class Upstreams:
    """One UpstreamClient per configured upstream (plus, when allowed, ad-hoc ones)."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._policy = OutboundPolicy.parse(config.outbound_allow)
        self._by_name: dict[str, UpstreamClient] = {
            u.name: UpstreamClient(u, metrics, outbound=self._policy.for_upstream(u.url))
            for u in config.upstreams
        }
        self._aliases: dict[str, UpstreamClient] = {}
        for client in self._by_name.values():
            for alias in self._names_for(client.config):
                self._aliases.setdefault(alias, client)
        self.default = self._by_name[config.default_upstream]

    @staticmethod
    def _names_for(upstream: UpstreamConfig) -> set[str]:
        names = {upstream.name, (urlsplit(upstream.url).netloc or "").lower()}
        if upstream.name == DOCKER_HUB_NAME:
            names |= DOCKER_HUB_ALIASES
        return names

    def __iter__(self) -> Iterator[UpstreamClient]:
        return iter(list(self._by_name.values()))

    def named(self, name: str) -> UpstreamClient | None:
        """The upstream a path prefix names (its configured name only)."""
        return self._by_name.get(name)

    def for_namespace(self, ns: str) -> UpstreamClient | None:
        """The upstream containerd's ``?ns=`` means: a configured one by name or URL host,
        else (only with ``mirror.allow_any_upstream``) an ad-hoc client for ``https://ns``,
        if the outbound policy lets the mirror go there and a slot is free."""
        ns = ns.strip().lower()
        found = self._aliases.get(ns) or self._by_name.get(ns)
        if found is not None or not self._config.allow_any_upstream:
            return found
        if not _HOST.match(ns):
            return None
        adhoc = dataclasses.replace(
            self.default.config, name=ns, url=f"https://{ns}", username=None, password=None
        )
        outbound = self._policy.for_upstream(None)  # a name a client chose: nothing trusted
        if outbound.refusal(adhoc.url) is not None:
            return None  # takes no slot; how_to_add says why
        if len(self._by_name) >= len(self._config.upstreams) + MAX_ADHOC:
            return None
        client = UpstreamClient(adhoc, self._metrics, outbound=outbound)
        self._by_name[ns] = client
        return client

    def how_to_add(self, ns: str) -> str:
        """A hint for the error a client sees when it names a registry nobody configured."""
        configured = ", ".join(sorted(self._by_name))
        if self._config.allow_any_upstream:
            ns = ns.strip().lower()
            refused = self._policy.for_upstream(None).refusal(f"https://{ns}")
            if refused is not None:
                return (
                    f"this mirror does not mirror registry {ns[:200]!r}: the outbound policy "
                    f"refuses it ({refused}); an operator can add it under mirror.upstreams"
                )
        return (
            f"this mirror does not mirror registry {ns[:200]!r} (it mirrors: {configured}); "
            f"add it under mirror.upstreams (name: {ns[:200]}, remoteurl: https://{ns[:200]}) "
            "or set mirror.allow_any_upstream: true"
        )

    async def close(self) -> None:
        for client in self._by_name.values():
            await client.close()
