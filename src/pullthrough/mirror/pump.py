"""The thread side of a download: moving an upstream body into the temp file and the hash.

A download thread reads the body into one of a few buffers (``recv_into``, or ``SSL_read``),
writes it at its offset (``pwrite``) and hands it to the download's hash lane, a thread of
its own that hashes the buffers in order while the next one is read and written. Every one
of those calls releases the GIL for the bulk of its work. The thread runs until the body
ends or something needs the event loop's decision; meanwhile it reports how far the file
has grown (``report``) every ``REPORT_BYTES`` or ``REPORT_SECONDS``, and the loop wakes
the readers then, not once per network read.

Nothing here raises into the event loop: a run returns what happened (``Moved``) and
``mirror.fetch`` decides (resume, spill, fail).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pullthrough.reference import Digest
from pullthrough.store.blobs import hasher_for
from pullthrough.upstream.client import BlobStream

# Buffers per download: one being read and written while the others wait to be hashed.
BUFFERS, BUFFER = 4, 512 * 1024
# The event loop hears of the file's growth (and wakes the readers) after this many bytes,
# or this long after the last report: few wake-ups per GiB, and readers of a slow upstream
# still see its bytes within a fraction of a second.
REPORT_BYTES = 8 * 1024 * 1024
REPORT_SECONDS = 0.1


class Digester:
    """The running hash of one download, fed in order on a lane (one thread) of its own."""

    def __init__(self, digest: Digest) -> None:
        self._hasher = hasher_for(digest)
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullthrough-hash")

    def feed(self, data: bytes | memoryview) -> Future[None]:
        """Queue ``data`` (which must not change until the future is done)."""
        return self._lane.submit(self._hasher.update, data)

    def hexdigest(self) -> Future[str]:
        """The digest of everything fed so far (after the queued updates)."""
        return self._lane.submit(self._hasher.hexdigest)

    def close(self) -> None:
        self._lane.shutdown(wait=False)


class Buffers:
    """The download's read buffers, reused in turn once their bytes are hashed."""

    def __init__(self) -> None:
        self._free: deque[tuple[memoryview, Future[None] | None]] = deque(
            (memoryview(bytearray(BUFFER)), None) for _ in range(BUFFERS)
        )

    def take(self) -> memoryview:
        buffer, hashing = self._free.popleft()
        if hashing is not None:
            hashing.result()  # its last bytes are hashed: it may be overwritten
        return buffer

    def give(self, buffer: memoryview, hashing: Future[None] | None) -> None:
        self._free.append((buffer, hashing))


# Called from the download thread: (bytes of the file written so far, bytes read from the
# upstream since the last report).
Report = Callable[[int, int], None]


@dataclass(slots=True)
class Moved:
    """What one run of a download thread did, and why it stopped."""

    written: int = 0  # bytes written to the file (and queued for the hash)
    unreported: int = 0  # bytes read from the upstream since the last report
    unwritten: bytes = b""  # read but neither written nor hashed (spilled, or the deadline)
    ended: bool = False  # the body ended
    overlong: bool = False  # the body goes on past the size announced
    timed_out: bool = False  # nothing arrived within the time-out
    broke: BaseException | None = None  # the connection broke
    disk_error: OSError | None = None  # writing failed: ``unwritten`` holds what was not


def move_body(
    stream: BlobStream,
    fd: int,
    digester: Digester,
    buffers: Buffers,
    offset: int,
    left: int | None,
    timeout: float,
    write_until: Callable[[], float],
    report: Report,
) -> Moved:
    """Move the body into the file, in a download thread: read it a buffer at a time, write
    each at ``offset`` on and queue it for the hash, until the body ends, a read fails or
    times out (``timeout`` seconds without a byte), or writing fails. ``left``: bytes the
    body should still have. ``fd`` < 0 (spilled): read one buffer and hand it back
    unwritten. Nothing is written after ``write_until()`` (monotonic time, asked before
    each write: the claim may have passed to another replica by then): what was read is
    handed back unwritten instead. Never
    raises: what happened is in the result. The first bytes are reported at once (time to
    first byte), later ones every ``REPORT_BYTES`` or ``REPORT_SECONDS``."""
    result = Moved()
    start = offset
    reported, read = offset, 0
    last_byte_at = time.monotonic()
    report_by = last_byte_at + REPORT_SECONDS
    buffer = buffers.take()
    filled = 0

    def flush() -> bool:
        nonlocal buffer, filled, offset
        data = buffer[:filled]
        if fd < 0 or time.monotonic() >= write_until():
            result.unwritten = bytes(data)
            filled = 0
            return False
        try:
            _write_all(fd, data, offset)
        except OSError as exc:
            result.disk_error, result.unwritten = exc, bytes(data)
            filled = 0
            return False
        buffers.give(buffer, digester.feed(data))
        buffer = buffers.take()
        offset += filled
        filled = 0
        return True

    try:
        while True:
            room = len(buffer) - filled
            if left is not None:
                if left <= 0:
                    result.ended = True
                    result.overlong = not stream.response.ended and _more_to_read(stream)
                    break
                room = min(room, left)
            # Bytes read but not yet reported wait at most until ``report_by``: an upstream
            # that pauses must not hold back from the readers what already arrived.
            now = time.monotonic()
            quiet = now - last_byte_at
            wait = timeout - quiet
            if read:
                wait = min(wait, max(report_by - now, 0.0))
            try:
                # (never 0: a zero time-out makes the socket non-blocking)
                count = stream.response.readinto(buffer[filled : filled + room], max(wait, 0.001))
            except TimeoutError:
                if read and time.monotonic() - last_byte_at < timeout:
                    if filled and not flush():
                        break
                    report(offset, read)
                    reported, read = offset, 0
                    continue
                result.timed_out = True
                break
            except Exception as exc:  # the connection broke (or the body framing did)
                result.broke = exc
                break
            if count == 0:
                result.ended = True
                break
            filled += count
            read += count
            last_byte_at = time.monotonic()
            if left is not None:
                left -= count
            now = last_byte_at
            due = (
                reported == start  # the first bytes
                or now >= report_by
                or offset + filled - reported >= REPORT_BYTES
            )
            if filled == len(buffer) or due:
                if not flush():
                    break
                if due:
                    report(offset, read)
                    reported, read, report_by = offset, 0, now + REPORT_SECONDS
        if filled:
            flush()
        result.written, result.unreported = offset - start, read
        return result
    finally:
        buffers.give(buffer, None)


def write_and_hash(fd: int, digester: Digester, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` and queue it for the hash (in a thread)."""
    _write_all(fd, memoryview(data), offset)
    digester.feed(data)


def hash_file(fd: int, digester: Digester) -> int:
    """Feed the file's bytes to the hash (in a thread); returns how many there were."""
    position = 0
    while chunk := os.pread(fd, BUFFERS * BUFFER, position):
        digester.feed(chunk)
        position += len(chunk)
    return position


def _more_to_read(stream: BlobStream) -> bool:
    """Whether the body goes on past the announced size (reads one byte, at once)."""
    try:
        return stream.response.readinto(memoryview(bytearray(1)), 0.001) > 0
    except Exception:
        return False


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        count = os.pwrite(fd, data, offset)
        data, offset = data[count:], offset + count
