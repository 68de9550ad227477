"""Where a request goes: the upstream client and repository a name resolved to, and the
scope a token must grant for it (``server.routing`` resolves names to these; a sync builds
them for its own images)."""

from __future__ import annotations

from dataclasses import dataclass

from pullthrough.upstream.client import UpstreamClient


@dataclass(frozen=True, slots=True)
class Route:
    upstream: UpstreamClient
    repo: str
    scope: str
