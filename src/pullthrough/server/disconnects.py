"""Telling a handler that waits (for a fetch's next bytes) the moment its client hangs up.

aiohttp tells a handler nothing when its client goes (handler cancellation is off: it
would cancel index writes and fetch bookkeeping half-way) until the handler next writes.
A reader waiting for a slow upstream would stay attached to the fetch, which then never
learns that nobody reads it (``mirror.fetches``). Instead of every waiting reader looking
at its connection on a timer, the server's ``connection_lost`` (hooked by
``server.limits.ConnectionGuard``) resolves the waits registered for that connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

T = TypeVar("T")


class ClientGone(Exception):
    """The client hung up while its handler waited."""


class Disconnects:
    """Waits that end when their connection is lost. Used from the loop thread only."""

    def __init__(self) -> None:
        self._waiting: dict[RequestHandler, set[asyncio.Future[None]]] = {}

    def lost(self, handler: RequestHandler) -> None:
        """``handler``'s connection is gone: end every wait registered for it."""
        for gone in self._waiting.pop(handler, ()):
            if not gone.done():
                gone.set_result(None)

    async def wait(self, request: web.Request, waiting: Awaitable[T]) -> T:
        """``waiting``'s result; raises ClientGone as soon as ``request``'s client is gone
        (``waiting`` is then cancelled)."""
        handler = request.protocol
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientGone  # lost before we could register: connection_lost already ran
        gone = asyncio.get_running_loop().create_future()
        registered = self._waiting.setdefault(handler, set())
        registered.add(gone)
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise ClientGone
        finally:
            task.cancel()
            registered.discard(gone)
            if not registered and self._waiting.get(handler) is registered:
                del self._waiting[handler]

    def __len__(self) -> int:
        """Connections with a wait registered (for tests and debugging)."""
        return len(self._waiting)


DISCONNECTS_KEY = web.AppKey("disconnects", Disconnects)
