"""SIGTERM's drain: stop listening, let transfers in flight finish for a grace period, then
cut off what is still open and stop the mirror.

aiohttp's own shutdown waits for a handler up to twice its timeout (the grace, then as
long again for the cancelled handler), so it is not the bound. Aborting the transport is
not enough either: a warm transfer sends with ``os.sendfile`` on a duplicate of the
socket (``server.sendfile``), which keeps the connection open after the transport closed
its descriptor. Shutting the socket itself down ends every send on it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

# After the drain: time for the mirror to stop (flush access times, close the index).
CLEANUP_TIMEOUT = 5.0


async def drain(runner: web.AppRunner, grace: float) -> bool:
    """Stop ``runner`` giving requests in flight ``grace`` seconds; False if the mirror
    did not stop after that either."""
    server = runner.server
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait({cleanup}, timeout=grace)
    if not done and server is not None:
        still_open = list(server.connections)
        log.warning("drain: %gs grace over, cutting off %d connection(s)", grace, len(still_open))
        for handler in still_open:
            _cut_off(handler)
    try:
        await asyncio.wait_for(cleanup, timeout=CLEANUP_TIMEOUT)
    except TimeoutError:
        log.error("shutdown: the mirror did not stop within %gs of the drain", CLEANUP_TIMEOUT)
        return False
    return True


def _cut_off(handler: RequestHandler) -> None:
    transport = handler.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # On a duplicate: uvloop's socket object may not offer shutdown(); the socket
        # is the same, so both directions end for every descriptor of it.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    transport.abort()
