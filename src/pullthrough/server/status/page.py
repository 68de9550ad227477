"""The status page itself: ``/ui/`` rendered on the server with Jinja2 (autoescaping on,
so every name, tag and error message from a client or an upstream is shown as text), and
its static files (stylesheet, script, the vendored uPlot chart library) from the package.

The first view needs no script: figures, upstreams, fetches and a page of repositories
(searched and paged by a plain GET form) are in the HTML. The script only draws the
charts from ``/ui/api/history``. The Content-Security-Policy allows scripts, styles and
requests from this origin only, and no inline script or style element at all.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from pullthrough.errors import NotFound
from pullthrough.progress import human
from pullthrough.server.routes import MIRROR_KEY
from pullthrough.server.status import content, figures, inflight
from pullthrough.server.status.figures import STARTED_KEY
from pullthrough.server.status.viewer import viewer

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PER_PAGE = 50
MAX_SEARCH = 200

# The only files /ui/static/ serves, with their types: a name from the URL is looked up
# here, never joined to a path.
STATIC_TYPES = {
    "status.css": "text/css",
    "status.js": "text/javascript",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE": "text/plain",
}

TEMPLATES_KEY = web.AppKey("status_templates", jinja2.Environment)
STATIC_KEY = web.AppKey("status_static", dict)


def add_page_routes(app: web.Application) -> None:
    """Load the templates and static files now, at start-up, so no request reads the
    package's files on the event loop."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pullthrough.server.status", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
    )
    env.filters["human"] = lambda n: human(int(n)) if n is not None else "-"
    env.get_template("status.html")  # compiled once, kept by the environment's cache
    app[TEMPLATES_KEY] = env
    files = resources.files("pullthrough.server.status") / "static"
    app[STATIC_KEY] = {name: (files / name).read_bytes() for name in STATIC_TYPES}
    app.router.add_get("/", root)
    app.router.add_get("/ui", to_page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/static/{name}", static)


async def root(request: web.Request) -> web.StreamResponse:
    """A browser opening the mirror's address is sent to the page; anything else gets the
    registry's answer for an unknown path."""
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPFound("/ui/")
    raise NotFound("no such endpoint: /")


async def to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def page(request: web.Request) -> web.StreamResponse:
    who = await viewer(request)
    mirror = request.app[MIRROR_KEY]
    search = request.query.get("q", "").strip()[:MAX_SEARCH]
    raw_page = request.query.get("page", "1")
    number = int(raw_page) if raw_page.isascii() and raw_page.isdigit() and len(raw_page) < 7 else 1
    number = max(1, number)
    found = await content.repositories(
        mirror, may_pull=who.may_pull, search=search, offset=(number - 1) * PER_PAGE,
        limit=PER_PAGE,
    )
    # Hosted repositories (the first page of them, by name) when any are configured.
    hosted = (
        await content.hosted_repositories(
            mirror, may_pull=who.may_pull, search=search, offset=0, limit=PER_PAGE
        )
        if mirror.hosted is not None
        else None
    )
    default = mirror.upstreams.default
    context: dict[str, Any] = {
        "hosted": hosted,
        "user": who.user,
        "overview": figures.overview(mirror, request.app[STARTED_KEY]),
        "upstreams": [figures.upstream_state(u, default=u is default) for u in mirror.upstreams],
        "fetches": inflight.fetches(mirror, may_pull=who.may_pull),
        "repositories": found.rows,
        "total": found.total,
        "search": search,
        "page": number,
        "pages": max(1, math.ceil(found.total / PER_PAGE)),
        "host": request.host,
        "default_upstream": default.name,
    }
    html = request.app[TEMPLATES_KEY].get_template("status.html").render(context)
    return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    kind = STATIC_TYPES.get(name)
    if kind is None:
        raise NotFound("no such file")
    return web.Response(
        body=request.app[STATIC_KEY][name],
        content_type=kind,
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"},
    )
