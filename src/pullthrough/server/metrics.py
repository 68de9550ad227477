"""Counting every client request by method, route kind and status, and timing it."""

from __future__ import annotations

import time

from aiohttp import web

from pullthrough.server.errors import Handler
from pullthrough.server.routes import KIND_KEY, MIRROR_KEY


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: it sees the status of every answer, errors included."""
    status = 500
    start = time.monotonic()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[MIRROR_KEY].metrics
        kind = request.get(KIND_KEY, "other")
        metrics.requests.labels(request.method, kind, str(status)).inc()
        metrics.request_duration.labels(kind).observe(time.monotonic() - start)
