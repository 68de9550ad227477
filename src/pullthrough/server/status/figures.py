"""The status page's numbers, read from the same Prometheus collectors ``/metrics``
exposes, so the page and a scrape taken at the same moment agree.

Hit ratio: lookups answered from the store (``hit``, and ``stale`` tags served when the
upstream failed) over all lookups, manifests and blobs together, from
``pullthrough_cache_total``. Bytes saved: blob bytes clients received
(``pullthrough_served_bytes_total``) beyond those the upstreams sent
(``pullthrough_upstream_bytes_total``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client.metrics import MetricWrapperBase

from pullthrough.mirror.service import Mirror
from pullthrough.upstream.client import UpstreamClient

# When the status API started (the overview's uptime).
STARTED_KEY = web.AppKey("status_started", float)


def total(metric: MetricWrapperBase, **labels: str) -> float:
    """The sum of a counter's (or gauge's) series whose labels include ``labels``."""
    out = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                out += sample.value
    return out


def overview(mirror: Mirror, started: float) -> dict[str, Any]:
    """Requests, cache lookups, bytes and the store, as whole numbers."""
    m = mirror.metrics
    hits, misses, stale = (int(total(m.cache, result=r)) for r in ("hit", "miss", "stale"))
    lookups = hits + misses + stale
    served = {s: int(total(m.served_bytes, source=s)) for s in ("cache", "fetch", "passthrough")}
    fetched = int(total(m.upstream_bytes))
    last = mirror.sweeper.last
    return {
        "uptime_seconds": round(time.time() - started, 1),
        "requests": int(total(m.requests)),
        "cache": {
            "hits": hits,
            "misses": misses,
            "stale": stale,
            "hit_ratio": (hits + stale) / lookups if lookups else None,
        },
        "bytes": {
            "served": sum(served.values()),
            "served_from_store": served["cache"],
            "served_while_fetching": served["fetch"],
            "served_without_keeping": served["passthrough"],
            "fetched_from_upstreams": fetched,
            "saved": max(0, sum(served.values()) - fetched),
        },
        "store": {
            "bytes": int(total(m.store_bytes)),
            "objects": int(total(m.store_objects)),
            "maxsize": last.limit if last is not None else None,
            "full": mirror.sweeper.full,
        },
        "evictions": {
            "objects": int(total(m.evictions)),
            "bytes": int(total(m.evicted_bytes)),
        },
    }


def upstream_state(upstream: UpstreamClient, *, default: bool) -> dict[str, Any]:
    """How one upstream is doing: circuit, last answer and error, rate limit, downloads."""
    limit = upstream.rate_limit
    blocked = max(0.0, limit.blocked_until - time.monotonic())
    return {
        "name": upstream.name,
        "url": upstream.base,
        "default": default,
        # closed: asked as usual; open: believed down; half-open: one probe under way.
        "circuit": upstream.breaker.state.value,
        "reachable": upstream.breaker.state.value == "closed",
        # Switched off by its config or ``pullthrough offline``: never contacted, so its
        # circuit says nothing about it.
        "offline": upstream.offline,
        "last_ok": _iso(upstream.last_ok),
        "last_error": upstream.last_error,
        "errors": int(total(upstream.metrics.upstream_errors, upstream=upstream.name)),
        "ratelimit": {
            "limit": limit.limit,
            "remaining": limit.remaining,
            "throttled": limit.throttled,
            "blocked_seconds": round(blocked, 1),
        },
        # Time to response headers over the last requests; None before the first answer.
        "latency": asdict(lat) if (lat := upstream.latency.summary()) else None,
        "downloads": upstream.downloads.in_use,
        "max_downloads": upstream.downloads.size,
    }


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None
