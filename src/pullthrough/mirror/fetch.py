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

The body is moved by a download thread (``mirror.pump``, over ``upstream.wire``), which
reports how far the file has grown every ``REPORT_BYTES`` or ``REPORT_SECONDS``; the readers
are woken then, not once per network read.

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
from pathlib import Path
from typing import Any

from pullthrough.errors import BlobUnknown, RegistryError, UpstreamInvalid, UpstreamUnavailable
from pullthrough.metrics import Metrics
from pullthrough.mirror.pump import Buffers, Digester, Moved, hash_file, move_body, write_and_hash
from pullthrough.mirror.stalls import StallWatch
from pullthrough.mirror.taps import Tap
from pullthrough.reference import Digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.identity import FileIdentity
from pullthrough.upstream.client import BlobStream, UpstreamClient
from pullthrough.upstream.wire import DOWNLOADS

log = logging.getLogger(__name__)

MAX_RESUMES = 3
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
        self._metrics = metrics
        self._upstream_bytes = metrics.upstream_bytes.labels(upstream.name)
        self._passthrough_bytes = metrics.passthrough_bytes.labels(upstream.name)
        self._resumes = metrics.upstream_resumes.labels(upstream.name)
        self._stalls = StallWatch(
            window=upstream.config.stall_timeout,
            budget=upstream.config.stall_budget,
            counter=metrics.upstream_stalls.labels(upstream.name),
        )
        self.upstream = upstream
        # Where the body is read from: the upstream, or (storage.s3) the bucket or the
        # replica that fetches it (``use_source``). The digest, the upstream's name and
        # who may read the blob stay the upstream's.
        self.source = upstream
        self.repo = repo
        self.store = store
        self.temp_path: Path = store.temp_path(digest)
        self.final_path: Path = store.path_for(digest)
        self.size: int | None = None  # the blob's total size, once the upstream said it
        self.written = 0
        self.verified = False  # the blob is stored (or, spilled, served in full)
        # The digest matched: every byte is final and may go out, durable or not yet.
        self.matched = False
        # The file as written, once it is in the store (renamed into place): from then on
        # it can be changed by others, so readers compare before their last byte.
        self.committed: FileIdentity | None = None
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
        # Cluster mode: awaited before the download thread starts (again); raises ClaimLost once
        # another replica owns the download. ``write_until`` says until when (monotonic
        # time) the download thread may write without asking again. None (one process):
        # no check at all.
        self.guard: Callable[[], Awaitable[None]] | None = None
        self.write_until: Callable[[], float] | None = None
        self._writing: asyncio.Future[Any] | None = None  # a download or write thread

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

    def use_source(self, source: UpstreamClient) -> None:
        """Read the (rest of the) body from ``source``; its bytes are counted under its
        name, not the upstream's."""
        self.source = source
        self._upstream_bytes = self._metrics.upstream_bytes.labels(source.name)

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
        digester = Digester(self.digest)
        try:
            if self.spilled_at is None:
                try:
                    fd = await asyncio.to_thread(self._open_temp, adopt)
                except OSError as exc:
                    if exc.errno not in _DISK_FULL:
                        raise
                    self._spill(str(exc))
            if adopt and fd >= 0:
                self.written = await asyncio.to_thread(hash_file, fd, digester)
                self._notify()
            await self._download(fd, digester)
            if self.size is not None and self.written != self.size:
                raise UpstreamInvalid(
                    f"upstream sent {self.written} bytes of {self.digest}, expected {self.size}"
                )
            if await asyncio.wrap_future(digester.hexdigest()) != self.digest.hex:
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
            digester.close()

    def _open_temp(self, adopt: bool) -> int:
        # Adopting: read back what is there. Otherwise the file must be new.
        mode = os.O_RDWR if adopt else os.O_WRONLY | os.O_EXCL
        return os.open(self.temp_path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)

    async def _download(self, fd: int, digester: Digester) -> None:
        failures = 0
        if self.size is not None and self.written >= self.size:
            # An adopted temp file that is already whole: nothing left to ask for.
            if not self._started.done():
                self._started.set_result(None)
            return
        buffers = Buffers()
        while True:
            reached = self.written
            try:
                async with contextlib.AsyncExitStack() as stack:
                    body = self.source.blob(self.repo, str(self.digest), self.written)
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
                            f"blob {self.digest} is unknown to {self.source.name} "
                            f"in repository {self.repo}"
                        )
                    if self.size is None:
                        self.size = stream.size
                    if not self._started.done():
                        self._started.set_result(None)
                        self._body_began = time.monotonic()
                    await self._pump(fd, digester, stream, buffers)
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

    async def _pump(
        self, fd: int, digester: Digester, stream: BlobStream, buffers: Buffers
    ) -> None:
        """Move the body into the file with a download thread, until it ends (returns) or
        breaks (raises UpstreamUnavailable: a resume may follow)."""
        loop = asyncio.get_running_loop()
        read_timeout = self.source.config.read_timeout

        def report(written: int, read: int) -> None:  # from the download thread
            loop.call_soon_threadsafe(self._advanced, written, read)

        while True:
            if self.guard is not None:
                await self.guard()
            allowance = self._stalls.allowance()
            timeout = max(0.001, min(allowance, read_timeout))
            began = self.written
            self._writing = loop.run_in_executor(
                DOWNLOADS,
                move_body,
                stream,
                -1 if self.spilled_at is not None else fd,
                digester,
                buffers,
                began,
                None if self.size is None else self.size - began,
                timeout,
                self.write_until or _forever,
                report,
            )
            try:
                # Shielded: a cancelled download (lost claim, abandoned, shutdown) breaks
                # the connection, then waits for the thread before closing fd.
                done: Moved = await asyncio.shield(self._writing)
            except asyncio.CancelledError:
                stream.response.abort()
                raise
            self._advanced(began + done.written, done.unreported)
            if done.disk_error is not None:
                if done.disk_error.errno not in _DISK_FULL:
                    raise done.disk_error
                # Cut the file back to the bytes that were hashed, then go on without it.
                await asyncio.to_thread(_cut, fd, self.written)
                self._spill(str(done.disk_error))
            if done.unwritten:
                # Spilled, or the thread reached the write deadline: then the guard renews
                # the claim (or raises ClaimLost) before the bytes are written.
                await self._write(fd, digester, done.unwritten)
            if done.overlong:
                raise UpstreamInvalid(
                    f"upstream sent more bytes for {self.digest} than it announced"
                )
            if done.timed_out:
                if timeout < allowance:
                    raise UpstreamUnavailable(f"{self.source.name} sent nothing for {timeout:g} s")
                raise self._stalls.stalled(allowance)
            if done.broke is not None:
                raise self.source.unavailable(done.broke)
            if done.ended:
                return

    def _advanced(self, written: int, read: int) -> None:
        """The download thread's report: ``written`` bytes of the file are written."""
        if read:
            self.upstream_bytes += read
            self._upstream_bytes.inc(read)
        if written > self.written:
            self.written = written
            self._notify()

    async def _write(self, fd: int, digester: Digester, data: bytes) -> None:
        if self.spilled_at is None:
            try:
                if self.guard is not None:
                    await self.guard()
                self._writing = asyncio.ensure_future(
                    asyncio.to_thread(write_and_hash, fd, digester, data, self.written)
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
        await self._deliver(digester, data)

    def _spill(self, reason: str) -> None:
        self.spilled_at = self.written
        if self._on_spill is not None:
            self._on_spill(self)
        log.debug("fetch of %s spilled at byte %d: %s", self.digest, self.written, reason)
        self._notify()

    async def _deliver(self, digester: Digester, data: bytes) -> None:
        """Spilled: hash the bytes and hand them to every attached reader."""
        if not self._taps:
            # Nothing to keep and nobody listening: stop downloading.
            raise UpstreamUnavailable(f"no reader is left for {self.digest}, which cannot be kept")
        await asyncio.wrap_future(digester.feed(data))
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
        self.committed = FileIdentity.of(written)
        try:
            self.store.commit_sync(self.temp_path, self.digest, written)
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


def _forever() -> float:
    return math.inf


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _cut(fd: int, size: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)
