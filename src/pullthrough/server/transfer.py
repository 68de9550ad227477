"""Moving blob bytes from disk to a client: a verified file, or a fetch's growing file.

Bytes go by ``loop.sendfile`` where the event loop supports it (the stdlib loop does:
zero-copy), else by large ``pread`` chunks in a thread (uvloop has no sendfile). A reader
of a fetch in progress sends what the fetch made readable and waits for more; if the
fetch fails, the connection is aborted so the client sees a failed transfer, never a
short or wrong body as a success.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from pullthrough.errors import RegistryError
from pullthrough.metrics import Metrics
from pullthrough.mirror.blobs import BlobBody, open_fetch_file
from pullthrough.mirror.fetch import Fetch
from pullthrough.server.ranges import ByteRange

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


async def send_blob(
    request: web.Request,
    body: BlobBody,
    byte_range: ByteRange | None,
    headers: dict[str, str],
    metrics: Metrics,
) -> web.StreamResponse:
    """Stream ``body`` (or ``byte_range`` of it) as the response to a blob GET."""
    resp = web.StreamResponse(headers=headers)
    start = 0
    stop = body.size
    if byte_range is not None and body.size is not None:
        resp.set_status(206)
        resp.headers["Content-Range"] = byte_range.content_range(body.size)
        start, stop = byte_range.start, byte_range.stop
    if stop is not None:
        resp.content_length = stop - start
    if body.cached is not None:
        try:
            await resp.prepare(request)
            await _send_span(request, resp, body.cached.fd, start, (stop or 0) - start)
            metrics.served_bytes.labels("cache").inc((stop or 0) - start)
        finally:
            body.cached.close()
    else:
        assert body.fetch is not None
        fd = await open_fetch_file(body.fetch)
        try:
            await resp.prepare(request)
            sent = await _send_growing(request, resp, body.fetch, fd, start, stop)
            metrics.served_bytes.labels("fetch").inc(sent)
        except RegistryError as err:
            # Headers are out; the only honest signal left is a broken connection.
            log.warning("aborting transfer of %s to a client: %s", body.digest, err.message)
            if request.transport is not None:
                request.transport.abort()
            return resp
        finally:
            os.close(fd)
    await resp.write_eof()
    return resp


async def _send_growing(
    request: web.Request,
    resp: web.StreamResponse,
    fetch: Fetch,
    fd: int,
    start: int,
    stop: int | None,
) -> int:
    """Send [start, stop) as the fetch makes it readable; returns the bytes sent."""
    position = start
    while stop is None or position < stop:
        readable = await fetch.wait_readable(position)
        limit = readable if stop is None else min(readable, stop)
        if stop is not None and limit == stop and not fetch.verified:
            # The last byte of a range completes the client's transfer: hold it until the
            # whole blob is verified, so not even a partial answer is served unverified.
            limit = stop - 1
            if limit <= position:
                await fetch.wait_verified()
                continue
        if limit > position:
            await _send_span(request, resp, fd, position, limit - position)
            position = limit
        elif fetch.verified:
            break  # everything sent (a body of unknown size has ended)
    return position - start


async def _send_span(
    request: web.Request, resp: web.StreamResponse, fd: int, offset: int, count: int
) -> None:
    if count <= 0:
        return
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is not None and _loop_has_sendfile(loop):
        await resp.drain()
        # Wraps the already-open descriptor; opens nothing, so it cannot block.
        with open(fd, "rb", buffering=0, closefd=False) as fileobj:  # noqa: ASYNC230
            await loop.sendfile(transport, fileobj, offset, count)
        return
    end = offset + count
    while offset < end:
        chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - offset), offset)
        if not chunk:
            raise RegistryError(f"blob file ended at byte {offset}, expected {end}")
        await resp.write(chunk)
        offset += len(chunk)


_SENDFILE_SUPPORT: dict[type, bool] = {}


def _loop_has_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """uvloop raises NotImplementedError from loop.sendfile; the stdlib loop supports it."""
    kind = type(loop)
    if kind not in _SENDFILE_SUPPORT:
        _SENDFILE_SUPPORT[kind] = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
    return _SENDFILE_SUPPORT[kind]
