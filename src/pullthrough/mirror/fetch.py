"""The one fetch of a digest: upstream body → temp file → verify → fsync → rename.

There is at most one Fetch per digest in the process. It runs as its own task, so it
can finish and store the blob after every client that asked for it has gone (whether it
does is ``mirror.fetches``'s call: ``on_idle``). Clients
do not wait for it to end: each one reads the growing temp file at its own pace, up to
``readable()``, which holds back the last byte until the digest is verified. A client can
therefore never complete a transfer of bytes that turn out wrong; on a mismatch the fetch
fails and every reader aborts its connection. The last byte goes out as soon as the digest
matched (``matched``); making the file durable (fsync, rename, index) comes after and only
decides whether the next request reads the stored file or fetches again.

The body is moved by a download thread (``upstream.wire``): ``recv_into`` a buffer,
``pwrite``, hash, each without the GIL, one step (up to ``STEP_BYTES`` or ``STEP_SECONDS``)
at a time; the event loop hears once per step how far the file has grown and wakes the
readers then, not once per network read.

If the upstream connection breaks mid-body, the fetch resumes with a Range request from
the byte it had reached (a few times, then gives up). So it does when the upstream stops
sending for the stall window (see ``mirror.stalls``): a silent connection is dropped long before
the read time-out, and all stalls of one fetch together may cost at most the stall budget.

When the disk is full (ENOSPC) the fetch does not fail: it "spills". The bytes already in
the temp file stay readable there; everything after goes to each attached reader's Tap,
hashed and verified all the same, and nothing is kept. A fetch started with
``keep=False`` (store over its limit, nothing left to evict) spills from the first byte.

In cluster mode (``pullthrough.cluster``) a Fetch is driven by the cluster instead of
``run()``: it either downloads as here (``download``, perhaps adopting the partial temp
file of a replica that died) or follows another replica's download of the same file
(``begin``/``advance``/``complete``/``fail``). Its readers see the same interface either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullthrough.errors import BlobUnknown, RegistryError, UpstreamInvalid, UpstreamUnavailable
from pullthrough.metrics import Metrics
from pullthrough.mirror.stalls import StallWatch
from pullthrough.mirror.taps import Tap
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore, hasher_for
from pullthrough.upstream.client import BlobStream, UpstreamClient
from pullthrough.upstream.wire import DOWNLOADS

log = logging.getLogger(__name__)

MAX_RESUMES = 3
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# A download thread's buffer: network reads fill it, then it is written and hashed at once.
BUFFER = 1024 * 1024
# One step of a download thread moves at most this many bytes, for at most about this long,
# before the event loop hears of them (and wakes the readers): few hops per GiB, and
# readers of a slow upstream still see its bytes within a fraction of a second.
STEP_BYTES = 8 * 1024 * 1024
STEP_SECONDS = 0.1


class ClaimLost(Exception):
    """Another replica took this download over (cluster mode): stop writing, leave the
    temp file to it."""


class Fetch:
    """One download of ``digest`` from ``repo`` on ``upstream`` into the store."""

    def __init__(
        self,
        *,
        digest: Digest,
        upstream: UpstreamClient,
        repo: str,
        store: BlobStore,
        on_stored: Callable[[Fetch], Awaitable[None]],
        metrics: Metrics,
        keep: bool = True,
        on_spill: Callable[[Fetch], None] | None = None,
    ) -> None:
        self.digest = digest
        self._upstream_bytes = metrics.upstream_bytes.labels(upstream.name)
        self._passthrough_bytes = metrics.passthrough_bytes.labels(upstream.name)
        self._resumes = metrics.upstream_resumes.labels(upstream.name)
        self._stalls = StallWatch(
            window=upstream.config.stall_timeout,
            budget=upstream.config.stall_budget,
            counter=metrics.upstream_stalls.labels(upstream.name),
        )
        self.upstream = upstream
        self.repo = repo
        self.store = store
        self.temp_path: Path = store.temp_path(digest)
        self.final_path: Path = store.path_for(digest)
        self.size: int | None = None  # the blob's total size, once the upstream said it
        self.written = 0
        self.verified = False  # the blob is stored (or, spilled, served in full)
        # The digest matched: every byte is final and may go out, durable or not yet.
        self.matched = False
        self.error: RegistryError | None = None
        self.upstream_bytes = 0
        self._body_began: float | None = None  # when the upstream's body began to arrive
        self._on_stored = on_stored
        self._on_spill = on_spill
        self._started = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
        # Where the temp file's bytes end once the fetch spilled (None: it did not).
        self.spilled_at: int | None = None if keep else 0
        self._taps: set[Tap] = set()
        # Called when the last reader detaches (mirror.fetches decides whether a download
        # nobody reads any more is worth finishing).
        self.on_idle: Callable[[Fetch], None] | None = None
        # Cluster mode: awaited before each step of the download; raises ClaimLost once
        # another replica owns the download. ``write_until`` says until when (monotonic
        # time) the download thread may write without asking again. None (one process):
        # no check at all.
        self.guard: Callable[[], Awaitable[None]] | None = None
        self.write_until: Callable[[], float] | None = None
        self._writing: asyncio.Future[Any] | None = None  # a step or a write, in its thread

    # --- for readers -------------------------------------------------------------------

    async def started(self) -> None:
        """Wait until the upstream answered with a body (size known); raises its error."""
        await asyncio.shield(self._started)

    @property
    def finished(self) -> bool:
        return self.verified or self.error is not None

    def attach(self) -> Tap:
        """Register a reader, so it gets the bytes that never reach the disk should the
        fetch spill. Call before any await after obtaining the fetch; ``detach`` after."""
        tap = Tap()
        self._taps.add(tap)
        return tap

    def detach(self, tap: Tap) -> None:
        tap.close()
        self._taps.discard(tap)
        if not self._taps and self.on_idle is not None:
            self.on_idle(self)

    def rate(self) -> float:
        """Bytes per second from the upstream since its body began to arrive (0 before)."""
        if self._body_began is None:
            return 0.0
        return self.upstream_bytes / max(1e-3, time.monotonic() - self._body_began)

    @property
    def readers(self) -> int:
        """Readers attached now."""
        return len(self._taps)

    def readable(self) -> int:
        """How many leading bytes of the temp file a reader may send now. After a spill the
        file holds ``spilled_at`` bytes and the rest comes through the reader's Tap."""
        if self.matched:
            # Final bytes: a later failure to keep them (fsync, rename) is no reader's concern.
            return self.spilled_at if self.spilled_at is not None else self.written
        if self.error is not None:
            raise self.error
        if self.spilled_at is not None:
            return self.spilled_at
        return max(0, self.written - 1)

    async def wait_readable(self, beyond: int) -> int:
        """Wait until more than ``beyond`` bytes are readable, the fetch ended, or it
        spilled; returns ``readable()`` (raising the fetch's error if it failed)."""
        while True:
            available = self.readable()
            if available > beyond or self.verified or self.spilled_at is not None:
                return available
            event = self._changed
            await event.wait()

    async def wait_matched(self) -> None:
        """Wait until the digest matched (the last byte may go out); raises the fetch's
        error if it failed before."""
        while not self.matched:
            self.readable()  # raises the error of a failed fetch
            event = self._changed
            await event.wait()

    async def wait_verified(self) -> None:
        """Wait until the blob is verified and stored; raises the fetch's error if it failed."""
        while not self.verified:
            self.readable()  # raises the error of a failed fetch
            event = self._changed
            await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- progress reported by a cluster follower ---------------------------------------

    def begin(self, size: int | None) -> None:
        """The download (another replica's) is under way; readers may start."""
        if self.size is None:
            self.size = size
        if not self._started.done():
            self._started.set_result(None)
        self._notify()

    def advance(self, written: int) -> None:
        """``written`` leading bytes of the temp file are on disk (not yet verified)."""
        if written > self.written:
            self.written = written
            self._notify()

    def complete(self, size: int) -> None:
        """The blob was verified and stored (by another replica) with ``size`` bytes."""
        self.written = size
        self.verified = self.matched = True
        self._notify()

    def fail(self, error: RegistryError) -> None:
        self.error = error
        self._notify()

    def settle(self) -> None:
        """The fetch is over (verified or failed): wake every reader for the last time."""
        if not self._started.done():
            self._started.set_exception(self.error or UpstreamUnavailable("fetch ended early"))
            self._started.exception()  # retrieved: readers may all have gone
        for tap in list(self._taps):
            tap.end(self.error)
        self._notify()

    # --- the download ------------------------------------------------------------------

    async def run(self) -> None:
        """Download, verify and store the blob, then settle."""
        try:
            await self.download()
        finally:
            self.settle()

    async def download(self, *, adopt: bool = False) -> None:
        """Download into ``temp_path``, verify, fsync, rename into place and index; on a
        failure set ``error`` and remove the temp file. ``adopt``: the temp file may hold
        the first bytes already (a replica that died wrote them): hash those, then ask
        the upstream for the rest. Raises ClaimLost (the file left as it is) only."""
        fd = -1
        hasher = hasher_for(self.digest)
        try:
            if self.spilled_at is None:
                try:
                    fd = await asyncio.to_thread(self._open_temp, adopt)
                except OSError as exc:
                    if exc.errno not in _DISK_FULL:
                        raise
                    self._spill(str(exc))
            if adopt and fd >= 0:
                self.written = await asyncio.to_thread(_hash_file, fd, hasher)
                self._notify()
            await self._download(fd, hasher)
            if self.size is not None and self.written != self.size:
                raise UpstreamInvalid(
                    f"upstream sent {self.written} bytes of {self.digest}, expected {self.size}"
                )
            if hasher.hexdigest() != self.digest.hex:
                raise UpstreamInvalid(
                    f"upstream sent bytes for {self.digest} that do not match that digest; "
                    "nothing was stored"
                )
            self.matched = True
            self._notify()
            if self.spilled_at is not None:
                await asyncio.to_thread(self._discard, fd)
                fd = -1
                self.verified = True
                self._passthrough_bytes.inc(self.written)
                log.info("served %s (%d bytes) without keeping it", self.digest, self.written)
            else:
                # _commit closes the descriptor even when the rename fails: never again here.
                committing, fd = fd, -1
                await asyncio.to_thread(self._commit, committing)
                self.verified = True
                log.info(
                    "stored %s (%d bytes) from %s/%s",
                    self.digest,
                    self.written,
                    self.upstream.name,
                    self.repo,
                )
                try:
                    await self._on_stored(self)
                except Exception:  # the verified file is in place; the next start indexes it
                    log.exception("indexing %s failed", self.digest)
        except ClaimLost:
            raise
        except Exception as exc:
            self.error = (
                exc
                if isinstance(exc, RegistryError)
                else UpstreamUnavailable(f"fetching {self.digest} failed: {exc}")
            )
            if isinstance(exc, UpstreamInvalid):
                log.error("fetch of %s failed its integrity check: %s", self.digest, exc)
            elif isinstance(exc, RegistryError):
                log.warning("fetch of %s failed: %s", self.digest, exc)
            else:
                log.exception("fetch of %s failed", self.digest)
            await asyncio.to_thread(self._discard, fd)
            fd = -1
        finally:
            if fd >= 0:
                # Lost to another replica, or cancelled: let a write still running in its
                # thread finish before the descriptor goes (its number could be reused).
                if self._writing is not None:
                    await asyncio.wait({self._writing})
                os.close(fd)

    def _open_temp(self, adopt: bool) -> int:
        # Adopting: read back what is there. Otherwise the file must be new.
        mode = os.O_RDWR if adopt else os.O_WRONLY | os.O_EXCL
        return os.open(self.temp_path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)

    async def _download(self, fd: int, hasher: object) -> None:
        failures = 0
        if self.size is not None and self.written >= self.size:
            # An adopted temp file that is already whole: nothing left to ask for.
            if not self._started.done():
                self._started.set_result(None)
            return
        buffer = bytearray(BUFFER)
        while True:
            reached = self.written
            try:
                async with contextlib.AsyncExitStack() as stack:
                    body = self.upstream.blob(self.repo, str(self.digest), self.written)
                    if self._started.done():
                        # A resume: its answer is waited for like the next chunk would be.
                        # (The first request has the read time-out: its clients wait for
                        # headers and get the error at once.)
                        async with self._stalls.waiting():
                            stream = await stack.enter_async_context(body)
                    else:
                        stream = await stack.enter_async_context(body)
                    if stream is None:
                        raise BlobUnknown(
                            f"blob {self.digest} is unknown to upstream {self.upstream.name} "
                            f"in repository {self.repo}"
                        )
                    if self.size is None:
                        self.size = stream.size
                    if not self._started.done():
                        self._started.set_result(None)
                        self._body_began = time.monotonic()
                    await self._pump(fd, hasher, stream, buffer)
                if self.size is None or self.written >= self.size:
                    return
                raise UpstreamUnavailable(
                    f"upstream closed the body of {self.digest} at {self.written} of {self.size}"
                )
            except UpstreamUnavailable as exc:
                if not self._started.done():
                    raise  # nothing arrived yet: fail fast, the client is waiting for headers
                # A connection that keeps breaking but makes progress is worth resuming;
                # one that breaks without delivering anything is given a few tries.
                failures = 0 if self.written > reached else failures + 1
                if failures > MAX_RESUMES:
                    raise
                if self._stalls.exhausted:
                    raise UpstreamUnavailable(
                        f"upstream {self.upstream.name} stalled {self._stalls.stalls} times "
                        f"sending {self.digest} ({self._stalls.budget:g} s without a byte in "
                        f"all); gave up at byte {self.written} of {self.size}"
                    ) from exc
                self._resumes.inc()
                log.warning("resuming %s at byte %d after: %s", self.digest, self.written, exc)
                await asyncio.sleep(0.2 * failures)

    async def _pump(self, fd: int, hasher: object, stream: BlobStream, buffer: bytearray) -> None:
        """Move the body into the file, one download-thread step at a time, until it ends
        (returns) or breaks (raises UpstreamUnavailable: a resume may follow)."""
        loop = asyncio.get_running_loop()
        read_timeout = self.upstream.config.read_timeout
        while True:
            if self.guard is not None:
                await self.guard()
            allowance = self._stalls.allowance()
            timeout = max(0.001, min(allowance, read_timeout))
            self._writing = loop.run_in_executor(
                DOWNLOADS,
                _step,
                stream,
                -1 if self.spilled_at is not None else fd,
                hasher,
                memoryview(buffer),
                self.written,
                None if self.size is None else self.size - self.written,
                timeout,
                self.written == 0,  # the first bytes go out at once (time to first byte)
                math.inf if self.write_until is None else self.write_until(),
            )
            try:
                # Shielded: a cancelled download (lost claim, abandoned, shutdown) breaks
                # the connection, then waits for the step before closing fd.
                step = await asyncio.shield(self._writing)
            except asyncio.CancelledError:
                stream.response.abort()
                raise
            read = step.written + len(step.unwritten)
            if read:
                self.upstream_bytes += read
                self._upstream_bytes.inc(read)
            if step.written:
                self.written += step.written
                self._notify()
            if step.disk_error is not None:
                if step.disk_error.errno not in _DISK_FULL:
                    raise step.disk_error
                # Cut the file back to the bytes that were hashed, then go on without it.
                await asyncio.to_thread(_cut, fd, self.written)
                self._spill(str(step.disk_error))
            if step.unwritten:
                # Spilled, or the step reached the write deadline: then the guard renews
                # the claim (or raises ClaimLost) before the bytes are written.
                await self._write(fd, hasher, step.unwritten)
            if step.overlong:
                raise UpstreamInvalid(
                    f"upstream sent more bytes for {self.digest} than it announced"
                )
            if step.timed_out:
                if timeout < allowance:
                    raise UpstreamUnavailable(
                        f"upstream {self.upstream.name} sent nothing for {timeout:g} s"
                    )
                raise self._stalls.stalled(allowance)
            if step.broke is not None:
                raise self.upstream.unavailable(step.broke)
            if step.ended:
                return

    async def _write(self, fd: int, hasher: object, data: bytes) -> None:
        if self.spilled_at is None:
            try:
                if self.guard is not None:
                    await self.guard()
                self._writing = asyncio.ensure_future(
                    asyncio.to_thread(_write_and_hash, fd, hasher, data, self.written)
                )
                await asyncio.shield(self._writing)
            except OSError as exc:
                if exc.errno not in _DISK_FULL:
                    raise
                await asyncio.to_thread(_cut, fd, self.written)
                self._spill(str(exc))
            else:
                self.written += len(data)
                self._notify()
                return
        await self._deliver(hasher, data)

    def _spill(self, reason: str) -> None:
        self.spilled_at = self.written
        if self._on_spill is not None:
            self._on_spill(self)
        log.debug("fetch of %s spilled at byte %d: %s", self.digest, self.written, reason)
        self._notify()

    async def _deliver(self, hasher: object, data: bytes) -> None:
        """Spilled: hash the bytes and hand them to every attached reader."""
        if not self._taps:
            # Nothing to keep and nobody listening: stop downloading.
            raise UpstreamUnavailable(f"no reader is left for {self.digest}, which cannot be kept")
        hasher.update(data)  # type: ignore[attr-defined]
        offset = self.written
        self.written += len(data)
        for tap in list(self._taps):
            await tap.put(offset, data)

    def _commit(self, fd: int) -> None:
        """fsync, close and rename the verified temp file into place."""
        try:
            os.fsync(fd)
            written = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            self.store.commit_sync(self.temp_path, self.digest)
        except FileNotFoundError:
            # Cluster mode: the replica that took this download over (the same file) has
            # renamed it into place already. Any other missing file is an error.
            if _identity(self.final_path) != (written.st_dev, written.st_ino):
                raise

    def _discard(self, fd: int) -> None:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()


@dataclass(slots=True)
class _Step:
    """What one step of a download thread did."""

    written: int = 0  # bytes written to the file and hashed
    unwritten: bytes = b""  # read but neither written nor hashed (spilled, or the deadline)
    ended: bool = False  # the body ended
    overlong: bool = False  # the body goes on past the size announced
    timed_out: bool = False  # nothing arrived within the time-out
    broke: BaseException | None = None  # the connection broke
    disk_error: OSError | None = None  # writing failed: ``unwritten`` holds what was not


def _step(
    stream: BlobStream,
    fd: int,
    hasher: object,
    buffer: memoryview,
    offset: int,
    left: int | None,
    timeout: float,
    first: bool,
    write_until: float,
) -> _Step:
    """One step of a download, in a download thread: read the body into ``buffer``, write
    each full buffer at ``offset`` on and hash it, until ``STEP_BYTES`` or ``STEP_SECONDS``
    (``first``: until the first bytes are written). ``fd`` < 0 (spilled): read one buffer
    and hand it back unwritten. Nothing is written after ``write_until`` (the claim may
    have passed to another replica by then): what was read is handed back unwritten
    instead. Never raises: what happened is in the result."""
    step = _Step()
    ends = time.monotonic() + STEP_SECONDS
    filled = 0

    def flush() -> bool:
        nonlocal filled, offset
        data = buffer[:filled]
        if fd < 0 or time.monotonic() >= write_until:
            step.unwritten = bytes(data)
            filled = 0
            return False
        try:
            _write_all(fd, data, offset)
        except OSError as exc:
            step.disk_error, step.unwritten = exc, bytes(data)
            filled = 0
            return False
        hasher.update(data)  # type: ignore[attr-defined]
        step.written += filled
        offset += filled
        filled = 0
        return True

    while step.written < STEP_BYTES:
        room = len(buffer) - filled
        if left is not None:
            room = min(room, left)
        if room <= 0 and left is not None and left <= 0:
            step.ended = True
            step.overlong = not stream.response.ended and _more_to_read(stream, buffer)
            break
        try:
            count = stream.response.readinto(buffer[filled : filled + room], timeout)
        except TimeoutError:
            step.timed_out = True
            break
        except Exception as exc:  # the connection broke (or the body framing did)
            step.broke = exc
            break
        if count == 0:
            step.ended = True
            break
        filled += count
        if left is not None:
            left -= count
        due = first or time.monotonic() >= ends
        if (filled == len(buffer) or due) and (not flush() or due):
            return step
    if filled:
        flush()
    return step


def _write_and_hash(fd: int, hasher: object, data: bytes, offset: int) -> None:
    _write_all(fd, memoryview(data), offset)
    hasher.update(data)  # type: ignore[attr-defined]


def _more_to_read(stream: BlobStream, buffer: memoryview) -> bool:
    """Whether the body goes on past the announced size (reads one byte, at once)."""
    try:
        return stream.response.readinto(buffer[:1], 0.001) > 0
    except Exception:
        return False


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        count = os.pwrite(fd, data, offset)
        data, offset = data[count:], offset + count


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _hash_file(fd: int, hasher: object) -> int:
    """Feed the file's bytes to ``hasher``; returns how many there were."""
    position = 0
    while chunk := os.pread(fd, 4 * BUFFER, position):
        hasher.update(chunk)  # type: ignore[attr-defined]
        position += len(chunk)
    return position


def _cut(fd: int, size: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)
