"""Moving blob bytes from disk to a client: a verified file, or a fetch's growing file.

Bytes go by sendfile where the connection allows (see ``server.sendfile``). A reader
of a fetch in progress sends what the fetch made readable and waits for more; if the
fetch fails, the connection is aborted so the client sees a failed transfer, never a
short or wrong body as a success.

A stored blob is sent unhashed only while its file's stat is the one recorded when it was
verified (``server.verification``); the stat is taken again before the last byte goes out,
so a file changed during the transfer is caught too. Any other read hashes the file, and
the last byte goes out only when the hash matches: a changed file is never served as a
success; it is removed and the next request fetches it again.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from pullthrough.errors import RegistryError, StoredBlobCorrupt
from pullthrough.metrics import Metrics
from pullthrough.mirror.blobs import BlobBody, open_fetch_file
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.taps import Tap
from pullthrough.reference import Digest
from pullthrough.server.disconnects import DISCONNECTS_KEY, ClientGone, Disconnects
from pullthrough.server.ranges import ByteRange, parse_range
from pullthrough.server.sendfile import CHUNK, send_span
from pullthrough.server.verification import ReadVerification
from pullthrough.store.blobs import OpenBlob, hasher_for
from pullthrough.store.identity import FileIdentity, fstat_identity, verify_fd_sync

log = logging.getLogger(__name__)



async def send_blob(
    request: web.Request,
    body: BlobBody,
    headers: dict[str, str],
    metrics: Metrics,
    verification: ReadVerification | None = None,
) -> web.StreamResponse:
    """Stream ``body`` (or the part the request's ``Range`` asks for) as the response to a
    blob GET, cached and hosted alike. A Range that cannot be served (416) lets go of the
    body first: its open file, or its tap on a fetch. A client that hangs up once the
    headers are out ends the response quietly: it is not an error of the mirror (no
    traceback, not counted as a 500)."""
    if body.redirect is not None:
        # storage.s3: the client reads the object itself (it follows a 307 with the same
        # method and Range, and checks the digest, as with a registry that redirects).
        return web.Response(status=307, headers={**headers, "Location": body.redirect})
    try:
        byte_range = (
            parse_range(request.headers.get("Range"), body.size) if body.size is not None else None
        )
    except RegistryError:
        if body.cached is not None:
            body.cached.close()
        if body.fetch is not None and body.tap is not None:
            body.fetch.detach(body.tap)
        raise
    resp = web.StreamResponse(headers=headers)
    try:
        return await _send(request, resp, body, byte_range, metrics, verification)
    except ConnectionError as err:  # reset, broken pipe, aiohttp's "closing transport"
        if not resp.prepared:
            raise
        log.info("client went away during %s %s: %r", request.method, request.path, err)
        if request.transport is not None:
            request.transport.abort()
        return resp


async def _send(
    request: web.Request,
    resp: web.StreamResponse,
    body: BlobBody,
    byte_range: ByteRange | None,
    metrics: Metrics,
    verification: ReadVerification | None,
) -> web.StreamResponse:
    start = 0
    stop = body.size
    if byte_range is not None and body.size is not None:
        resp.set_status(206)
        resp.headers["Content-Range"] = byte_range.content_range(body.size)
        start, stop = byte_range.start, byte_range.stop
    if stop is not None:
        resp.content_length = stop - start
    if body.cached is not None:
        cached = body.cached
        stop = cached.size if stop is None else stop
        check = verification if verification is not None and verification.enabled else None
        try:
            expected = cached.identity
            trusted = check is not None and check.trusted(body.digest, expected)
            if check is not None and byte_range is not None and not trusted:
                # A range of a file not known to be as verified: the client is sent only
                # part of it, so no held-back last byte can stand for the whole; hash the
                # whole file before any header goes out (once: it is then trusted).
                verified = await asyncio.to_thread(verify_fd_sync, cached.fd, body.digest)
                if verified is None:
                    log.error("stored %s does not match its digest: removed", body.digest)
                    await check.failed(body.digest)
                    raise StoredBlobCorrupt(f"stored {body.digest} was corrupt; fetch it again")
                check.passed(body.digest, verified)
                expected, trusted = verified, True
            await resp.prepare(request)
            if check is None:
                await send_span(request, resp, cached.fd, start, stop - start)
            else:
                if trusted:
                    outcome = await _send_checked(
                        request, resp, cached.fd, expected, body.digest, start, stop, check
                    )
                else:
                    outcome = await _send_hashed(resp, cached, body.digest, check)
                if outcome != SENT:
                    if outcome == CORRUPT:
                        log.error("stored %s does not match its digest: removed", body.digest)
                        await check.failed(body.digest)
                    else:
                        log.warning(
                            "stored %s was written to while it was sent: cut short", body.digest
                        )
                    if request.transport is not None:
                        request.transport.abort()  # the client sees a failed transfer
                    return resp
            metrics.served_bytes.labels("cache").inc(stop - start)
        finally:
            cached.close()
    else:
        assert body.fetch is not None and body.tap is not None
        fd = -1
        try:
            fd = await open_fetch_file(body.fetch)
            await resp.prepare(request)
            sent = await _send_growing(request, resp, body.fetch, fd, start, stop, verification)
            sent_through_tap = await _send_tapped(resp, body.fetch, body.tap, start + sent, stop)
            metrics.served_bytes.labels("fetch").inc(sent)
            metrics.served_bytes.labels("passthrough").inc(sent_through_tap)
        except ClientGone:
            log.debug("client of %s went away while it was being fetched", body.digest)
            return resp
        except RegistryError as err:
            if not resp.prepared:
                raise
            # Headers are out; the only honest signal left is a broken connection.
            log.warning("aborting transfer of %s to a client: %s", body.digest, err.message)
            if request.transport is not None:
                request.transport.abort()
            return resp
        finally:
            body.fetch.detach(body.tap)
            if fd >= 0:
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
    verification: ReadVerification | None = None,
) -> int:
    """Send [start, stop) from the temp file as the fetch makes it readable, until the end
    or the point where the fetch spilled; returns the bytes sent. Once the fetch has put
    the file in the store, others can change it: the last byte goes out only if the file
    is still the one written, or hashes to the digest again."""
    position = start
    while stop is None or position < stop:
        if fetch.spilled_at is not None and position >= fetch.spilled_at:
            break  # the rest never reaches the disk: _send_tapped takes over
        readable = await _disconnects(request).wait(request, fetch.wait_readable(position))
        limit = readable if stop is None else min(readable, stop)
        if stop is not None and limit == stop and not fetch.matched:
            # The last byte of a range completes the client's transfer: hold it until the
            # whole blob is verified, so not even a partial answer is served unverified.
            limit = stop - 1
            if limit <= position:
                await _disconnects(request).wait(request, fetch.wait_matched())
                continue
        if limit > position:
            end = stop if stop is not None else fetch.written
            if fetch.matched and fetch.committed is not None and limit == end:
                await send_span(request, resp, fd, position, limit - 1 - position)
                position = limit - 1
                await _still_as_fetched(fetch, fd, verification)
            await send_span(request, resp, fd, position, limit - position)
            position = limit
        elif fetch.matched:
            break  # everything sent (a body of unknown size has ended)
    return position - start


async def _still_as_fetched(
    fetch: Fetch, fd: int, verification: ReadVerification | None
) -> None:
    """Raises StoredBlobCorrupt (after removing the file) if the fetched file was changed
    since it was put in the store and no longer hashes to its digest."""
    assert fetch.committed is not None
    now = await asyncio.to_thread(fstat_identity, fd)
    was = fetch.committed
    if (now.ino, now.size, now.mtime_ns) == (was.ino, was.size, was.mtime_ns):
        return
    if await asyncio.to_thread(verify_fd_sync, fd, fetch.digest) is not None:
        return
    log.error("stored %s does not match its digest: removed", fetch.digest)
    if verification is not None:
        await verification.failed(fetch.digest)
    raise StoredBlobCorrupt(f"stored {fetch.digest} was corrupt; fetch it again")


def _disconnects(request: web.Request) -> Disconnects:
    return request.app[DISCONNECTS_KEY]


# How a checked send of a stored file ended.
SENT, CORRUPT, UNSETTLED = "sent", "corrupt", "unsettled"


async def _send_checked(
    request: web.Request,
    resp: web.StreamResponse,
    fd: int,
    expected: FileIdentity,
    digest: Digest,
    start: int,
    stop: int,
    check: ReadVerification,
) -> str:
    """Send [start, stop) of a file verified while it had the identity ``expected``,
    unhashed (sendfile), all but the last byte; then stat it again. Unchanged: the last
    byte goes out. Only its ctime changed (eviction renamed or unlinked it under us, a
    chmod): hash it again, and send the last byte only if it still matches. Written to
    (mtime, size or inode changed): what already went out may be bytes that are gone now,
    so the transfer is not completed even if the file matches again."""
    if stop <= start:
        return SENT
    await send_span(request, resp, fd, start, stop - 1 - start)
    last, now = await asyncio.to_thread(_last_byte_and_identity, fd, stop - 1)
    if now != expected:
        verified = await asyncio.to_thread(verify_fd_sync, fd, digest)
        if verified is None:
            return CORRUPT
        check.passed(digest, verified)
        if (now.ino, now.size, now.mtime_ns) != (expected.ino, expected.size, expected.mtime_ns):
            return UNSETTLED
        last, now = await asyncio.to_thread(_last_byte_and_identity, fd, stop - 1)
        if now != verified:
            return UNSETTLED  # changing still: this client retries, the next read hashes
    await resp.write(last)
    return SENT


def _last_byte_and_identity(fd: int, offset: int) -> tuple[bytes, FileIdentity]:
    # Read first, stat after: an unchanged stat vouches for the byte read before it.
    return os.pread(fd, 1, offset), fstat_identity(fd)


async def _send_hashed(
    resp: web.StreamResponse, blob: OpenBlob, digest: Digest, check: ReadVerification
) -> str:
    """Send the whole file, hashing what is sent; the last chunk only if the hash is the
    digest (when not, the response is left short). A match records the identity the file
    had when it was opened: if it changed since, the next read hashes again."""
    hasher = hasher_for(digest)
    position, size = 0, blob.size
    while position < size - 1:
        count = min(CHUNK, size - 1 - position)
        chunk = await asyncio.to_thread(_read_and_hash, blob.fd, hasher, count, position)
        if not chunk:
            return CORRUPT  # shorter than it was: not the blob any more
        await resp.write(chunk)
        position += len(chunk)
    last = await asyncio.to_thread(_read_and_hash, blob.fd, hasher, size - position, position)
    if hasher.hexdigest() != digest.hex:
        return CORRUPT
    if last:
        await resp.write(last)
    check.passed(digest, blob.identity)
    return SENT


def _read_and_hash(fd: int, hasher: object, count: int, offset: int) -> bytes:
    data = os.pread(fd, count, offset)
    hasher.update(data)  # type: ignore[attr-defined]
    return data


async def _send_tapped(
    resp: web.StreamResponse, fetch: Fetch, tap: Tap, position: int, stop: int | None
) -> int:
    """Send what a spilled fetch hands this reader, from ``position``. The last byte is
    held until the fetch verified the whole blob, as for bytes read from disk."""
    if fetch.spilled_at is None or (stop is not None and position >= stop):
        return 0
    start, held = position, b""
    taken = position  # bytes taken from the stream: sent, plus the one held back
    while (item := await tap.get()) is not None:
        offset, data = item
        if offset + len(data) <= taken:
            continue
        if offset < taken:
            data = data[taken - offset :]
            offset = taken
        if stop is not None:
            data = data[: max(0, stop - offset)]
        if not data:
            continue  # past the range: keep draining until the fetch says it verified
        taken += len(data)
        out = held + data
        held, out = out[-1:], out[:-1]
        if out:
            await resp.write(out)
            position += len(out)
    if held:
        await resp.write(held)
        position += len(held)
    return position - start
