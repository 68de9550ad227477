"""Counting every client request by method, route kind and status."""

from __future__ import annotations

from aiohttp import web

from pullthrough.server.errors import Handler
from pullthrough.server.routes import KIND_KEY, MIRROR_KEY


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: it sees the status of every answer, errors included."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[MIRROR_KEY].metrics.requests.labels(
            request.method, request.get(KIND_KEY, "other"), str(status)
        ).inc()
