"""What one client may cost the server: connections, time to send a request, and bodies.

aiohttp closes idle keep-alive connections (``keepalive_timeout``) and refuses oversized
request lines and headers, but it lets a new connection take forever to send its first
request (a slowloris) and accepts any number of connections. The guard watches the
server's connections: a connection that has not sent a whole request within
``header_timeout`` of opening is closed, and connections beyond ``max_connections`` are
closed as they arrive. A lost connection also ends, at once, any wait its handler is in
(``server.disconnects``).

A pull sends no body. aiohttp reads an unread body after the response (for up to ten
seconds) to keep the connection; a body over ``max_body_size`` is instead answered with 413
at once and the connection closed, unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler

from pullthrough.config import Limits
from pullthrough.errors import SizeInvalid
from pullthrough.server.disconnects import Disconnects
from pullthrough.server.errors import error_response

log = logging.getLogger(__name__)

WARN_INTERVAL = 60.0


def body_limit(
    max_bytes: int, *, exempt: Callable[[web.Request], bool] = lambda request: False
) -> Middleware:
    """Middleware refusing request bodies over ``max_bytes`` (or of unannounced length),
    except on requests ``exempt`` names (pushes to hosted repositories)."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if exempt(request):
            return await handler(request)
        length = request.content_length
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if not chunked and (length is None or length <= max_bytes):
            return await handler(request)
        refused = SizeInvalid(
            f"request body refused: a pull sends none; this mirror accepts at most {max_bytes} "
            "bytes, with a Content-Length (mirror.limits.max_body_size)",
            headers={"Connection": "close"},
        )
        response = error_response(request, refused)
        await response.prepare(request)
        await response.write_eof()
        # Close now: aiohttp would otherwise read (and wait for) the rest of the body.
        request.protocol.force_close()
        return response

    return limit


class ConnectionGuard:
    def __init__(self, server: web.Server, limits: Limits, disconnects: Disconnects) -> None:
        self._server = server
        self._limits = limits
        self._waiting: dict[RequestHandler, float] = {}  # opened, no request yet
        self._refused = 0
        self._warned_at = 0.0
        self._task: asyncio.Task[None] | None = None
        made, lost, factory = server.connection_made, server.connection_lost, server.request_factory

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            if len(server.connections) > limits.max_connections:
                self._refuse(transport)
                return
            self._waiting[handler] = time.monotonic()

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._waiting.pop(handler, None)
            lost(handler, exc)
            disconnects.lost(handler)

        def request_factory(*args: Any) -> web.BaseRequest:
            self._waiting.pop(args[2], None)  # (message, payload, protocol, writer, task)
            return factory(*args)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        period = min(1.0, self._limits.header_timeout / 2)
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self._limits.header_timeout
            for handler, opened in list(self._waiting.items()):
                if opened < deadline:
                    self._waiting.pop(handler, None)
                    if handler.transport is not None:
                        handler.transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.close()
        self._refused += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning(
                "refusing connections beyond mirror.limits.max_connections (%d); %d so far",
                self._limits.max_connections,
                self._refused,
            )
