"""The registries this mirror pulls from, found by the names clients use for them.

Configured upstreams live as long as the mirror. With ``mirror.allow_any_upstream`` a
client may name any registry host (``?ns=``, a path prefix), and a client for it is made
on demand in an ad-hoc slot: at most ``mirror.adhoc_upstreams.max`` of them, each given
back once unused for ``mirror.adhoc_upstreams.idle`` (its connections closed, its metrics
series removed), so names a client makes up cannot hold the slots for good.

Who may pull is decided before anything is made: ``config_for`` says what a name means
without creating a slot, and ``client_for`` makes one only for a request that passed
authorization.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from pullthrough.config import DOCKER_HUB_NAME, Config, UpstreamConfig
from pullthrough.metrics import Metrics
from pullthrough.upstream.client import UpstreamClient
from pullthrough.upstream.outbound import OutboundPolicy

DOCKER_HUB_ALIASES = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$")


class Upstreams:
    """One UpstreamClient per configured upstream (plus, when allowed, ad-hoc ones)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
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
        # Ad-hoc clients by name, least recently used first, with when each was last used.
        self._adhoc: OrderedDict[str, tuple[UpstreamClient, float]] = OrderedDict()
        self._retired: list[UpstreamClient] = []  # reclaimed, connections not closed yet

    @staticmethod
    def _names_for(upstream: UpstreamConfig) -> set[str]:
        names = {upstream.name, (urlsplit(upstream.url).netloc or "").lower()}
        if upstream.name == DOCKER_HUB_NAME:
            names |= DOCKER_HUB_ALIASES
        return names

    def __iter__(self) -> Iterator[UpstreamClient]:
        adhoc = [client for client, _ in self._adhoc.values()]
        return iter([*self._by_name.values(), *adhoc])

    def configured(self) -> list[UpstreamClient]:
        """The configured upstreams' clients (no ad-hoc ones)."""
        return list(self._by_name.values())

    @property
    def adhoc_count(self) -> int:
        """Ad-hoc slots held now."""
        return len(self._adhoc)

    def named(self, name: str) -> UpstreamClient | None:
        """The upstream a path prefix names (its configured name only)."""
        return self._by_name.get(name)

    def config_for(self, ns: str) -> UpstreamConfig | None:
        """What containerd's ``?ns=`` (or a registry host as a path prefix) means, without
        making anything: a configured upstream by name or URL host, else (only with
        ``mirror.allow_any_upstream``) an ad-hoc upstream at ``https://ns`` if the outbound
        policy lets the mirror go there; None when it means no upstream."""
        ns = ns.strip().lower()
        found = self._aliases.get(ns) or self._by_name.get(ns)
        if found is not None:
            return found.config
        if not self._config.allow_any_upstream or not _HOST.match(ns):
            return None
        if self._policy.for_upstream(None).refusal(f"https://{ns}") is not None:
            return None  # how_to_add says why
        return dataclasses.replace(
            self.default.config, name=ns, url=f"https://{ns}", username=None, password=None
        )

    def client_for(self, config: UpstreamConfig) -> UpstreamClient | None:
        """The client of an upstream ``config_for`` returned: a configured one, or an ad-hoc
        one, made now in a free slot (idle slots are given back first). None when every
        slot is busy. Call it only once the client is authorized to pull from it."""
        configured = self._by_name.get(config.name)  # never an ad-hoc name (config_for)
        if configured is not None:
            return configured
        now = self._clock()
        held = self._adhoc.get(config.name)
        if held is not None:
            self._adhoc[config.name] = (held[0], now)
            self._adhoc.move_to_end(config.name)
            return held[0]
        self.reclaim_idle()
        if len(self._adhoc) >= self._config.adhoc_max:
            return None
        # A name a client chose: nothing is trusted beyond public addresses.
        client = UpstreamClient(
            config, self._metrics, outbound=self._policy.for_upstream(None), clock=self._clock
        )
        self._adhoc[config.name] = (client, now)
        return client

    def for_namespace(self, ns: str) -> UpstreamClient | None:
        """``client_for(config_for(ns))``: makes an ad-hoc slot, for authorized requests."""
        config = self.config_for(ns)
        return self.client_for(config) if config is not None else None

    def reclaim_idle(self) -> int:
        """Give back the ad-hoc slots unused for ``mirror.adhoc_upstreams.idle``: no request
        routed to it, and none of its upstream requests (or downloads) under way or ended,
        for that long. Their connections are closed by the next ``reclaim()`` or
        ``close()``. Returns how many were given back."""
        now = self._clock()
        idle = [
            (name, client)
            for name, (client, routed) in self._adhoc.items()
            if not client.in_use
            and now - max(routed, client.last_active) >= self._config.adhoc_idle
        ]
        given_back = 0
        for name, client in idle:
            del self._adhoc[name]
            self._retired.append(client)
            self._metrics.forget_upstream(name)
            given_back += 1
        return given_back

    async def reclaim(self) -> int:
        """``reclaim_idle()``, then close the connections of every client given back."""
        given_back = self.reclaim_idle()
        retired, self._retired = self._retired, []
        for client in retired:
            await client.close()
        return given_back

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
            if _HOST.match(ns) and len(self._adhoc) >= self._config.adhoc_max:
                return (
                    f"this mirror cannot mirror registry {ns[:200]!r} now: all "
                    f"{self._config.adhoc_max} ad-hoc upstream slots are in use "
                    "(mirror.adhoc_upstreams.max); try again later, or an operator can add "
                    "it under mirror.upstreams"
                )
        return (
            f"this mirror does not mirror registry {ns[:200]!r} (it mirrors: {configured}); "
            f"add it under mirror.upstreams (name: {ns[:200]}, remoteurl: https://{ns[:200]}) "
            "or set mirror.allow_any_upstream: true"
        )

    async def close(self) -> None:
        for client in [*self, *self._retired]:
            await client.close()
        self._retired = []
