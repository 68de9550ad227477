"""The status page's JSON API under ``/ui/api/`` (described in ``openapi.yaml``).

Every endpoint authenticates its client as a pull does and shows only the repositories
that client may pull (``server.status.viewer``); aggregate figures (counters, store size,
upstream states) name no repository and are the same for every viewer. Nothing here
writes: the API is read-only and reads the index off the event loop, as pulls do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pullthrough.errors import PaginationInvalid
from pullthrough.server.routes import MIRROR_KEY
from pullthrough.server.status import content, figures, inflight
from pullthrough.server.status.figures import STARTED_KEY
from pullthrough.server.status.page import add_page_routes
from pullthrough.server.status.recorder import HISTORY_KEY, recording
from pullthrough.server.status.viewer import viewer
from pullthrough.store.history import RESOLUTIONS

PER_PAGE = 50
MAX_PER_PAGE = 200
# content.repositories or content.hosted_repositories
Lister = Callable[..., Awaitable[content.ContentPage]]
MAX_SEARCH = 200

# What a browser must not do with these answers: cache them, or guess another type.
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def add_routes(app: web.Application) -> None:
    """Register the API; call before the registry's catch-all route."""
    app[STARTED_KEY] = time.time()
    app.cleanup_ctx.append(recording)  # after the mirror's: its index directory exists
    app.router.add_get("/ui/api/overview", overview)
    app.router.add_get("/ui/api/upstreams", upstreams)
    app.router.add_get("/ui/api/fetches", fetches)
    app.router.add_get("/ui/api/repositories", repositories)
    app.router.add_get("/ui/api/hosted", hosted)
    app.router.add_get("/ui/api/history", history)
    add_page_routes(app)


async def overview(request: web.Request) -> web.StreamResponse:
    """Requests, hit ratio, bytes served and fetched, the store against ``maxsize``."""
    await viewer(request)
    return _json(figures.overview(request.app[MIRROR_KEY], request.app[STARTED_KEY]))


async def upstreams(request: web.Request) -> web.StreamResponse:
    """Each configured (or ad-hoc, while it holds a slot) upstream's state."""
    await viewer(request)
    mirror = request.app[MIRROR_KEY]
    default = mirror.upstreams.default
    states = [figures.upstream_state(u, default=u is default) for u in mirror.upstreams]
    return _json({"upstreams": states})


async def fetches(request: web.Request) -> web.StreamResponse:
    """Blob downloads under way for repositories the viewer may pull."""
    who = await viewer(request)
    return _json({"fetches": inflight.fetches(request.app[MIRROR_KEY], may_pull=who.may_pull)})


async def repositories(request: web.Request) -> web.StreamResponse:
    """Cached repositories and tags the viewer may pull: ``q`` searches
    ``upstream/repository`` (substring, any case), ``page`` (from 1) and ``per_page``
    (1 to 200) page them."""
    return await _content(request, content.repositories)


async def hosted(request: web.Request) -> web.StreamResponse:
    """Hosted repositories and tags the viewer may pull, searched and paged as above."""
    return await _content(request, content.hosted_repositories)


async def _content(request: web.Request, lister: Lister) -> web.StreamResponse:
    who = await viewer(request)
    page = _whole(request, "page", 1, 1, 10**6)
    per_page = _whole(request, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    search = request.query.get("q", "").strip()
    if len(search) > MAX_SEARCH:
        raise PaginationInvalid(f"q is longer than {MAX_SEARCH} characters")
    found = await lister(
        request.app[MIRROR_KEY],
        may_pull=who.may_pull,
        search=search,
        offset=(page - 1) * per_page,
        limit=per_page,
    )
    return _json(
        {
            "total": found.total,
            "page": page,
            "per_page": per_page,
            "repositories": found.rows,
        }
    )


async def history(request: web.Request) -> web.StreamResponse:
    """The charts' buckets over ``range`` (hour: 1-minute buckets, day: 15-minute, week:
    2-hour), oldest first; buckets without a sample are left out."""
    await viewer(request)
    name = request.query.get("range", "hour")
    if name not in RESOLUTIONS:
        raise PaginationInvalid(f"range must be one of {', '.join(RESOLUTIONS)}")
    seconds, points = await request.app[HISTORY_KEY].points(name, time.time())
    return _json(
        {
            "range": name,
            "bucket_seconds": seconds,
            "points": [
                {
                    "start": p.start,
                    "requests": p.requests,
                    "hits": p.hits,
                    "misses": p.misses,
                    "hit_ratio": p.hits / (p.hits + p.misses) if p.hits + p.misses else None,
                    "served": p.served,
                    "fetched": p.fetched,
                    "saved": max(0, p.served - p.fetched),
                    "evicted": p.evicted,
                    "store_bytes": p.store_bytes,
                }
                for p in points
            ],
        }
    )


def _whole(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw in (None, ""):
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or not low <= int(raw) <= high:
        raise PaginationInvalid(f"{key} must be a whole number from {low} to {high}")
    return int(raw)


def _json(doc: dict[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(doc).encode(), content_type="application/json", headers=HEADERS
    )
