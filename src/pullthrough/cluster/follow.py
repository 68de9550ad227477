"""Following another replica's download: tail its temp file in the shared store.

Only a download of the same upstream is followed (claims are per upstream and digest), and
a client of another repository joins it only once ``mirror.provenance`` confirmed that the
upstream holds the blob for that repository too. The file is the one the claim names by
its id, in the storage root's ``tmp/`` (never a path read from Redis).

The follower offers its clients the bytes on disk as they arrive (less the last, held
back as always) and completes only when the owner has renamed *that very file* (same
inode) into place under ``blobs/``: the rename happens after the digest matched, so that
is the proof the bytes are right. It never asks the upstream for the blob.

When the owner's claim is gone for good (it died), the follower takes over the same file
(see ``ClusterFetches``). It may only ever continue that file: its clients already have
bytes from it, and only a hash over the whole file vouches for them. Anything else (the
file removed because the owner found it corrupt, another file claimed in the meantime)
aborts its clients' transfers, so they retry rather than complete with unproven bytes.

Why the shared file rather than a stream from the owner over HTTP: the bytes are already
on the storage every replica reads; tailing them costs the follower an ``fstat`` per poll
and the same reads it makes for a local fetch, while a stream from the owner costs the
owner a read and a send per follower and the follower a receive, and it would need its
own endpoint, authentication and back-pressure. The progress signal is the file's size,
with the claim in Redis read only to learn the size, a failure, or the owner's death.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from pathlib import Path

from pullthrough.cluster.claims import CLAIM_TTL, Claim, Claims, Verdict
from pullthrough.cluster.connection import RedisUnavailable
from pullthrough.errors import UpstreamUnavailable
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.provenance import Kind, Provenance

log = logging.getLogger(__name__)

# The follower looks at the file this often; at the claim this often once it started
# (twice as often as the file before, to start soon after the owner's upstream answered).
POLL = 0.02
CHECK_EVERY = 0.5
# A claim missing this long means the owner is gone, not that Redis lost its data and the
# live owner has yet to renew.
GRACE = 1.0


class Follower:
    """One replica following another's download of ``fetch.digest`` from the same upstream."""

    def __init__(
        self, claims: Claims, provenance: Provenance, fetch: Fetch, claim: Claim, token: str
    ) -> None:
        self._claims = claims
        self._provenance = provenance
        self._fetch = fetch
        self._claim = claim
        self._token = token
        self._digest = str(fetch.digest)
        self._path: Path = claim.path
        self._fd = -1
        self._size = claim.size
        self._started = False
        self._missing_since: float | None = None
        self._grew = time.monotonic()
        # Without Redis, a file that stopped growing this long has no live owner.
        self._stall = fetch.upstream.config.read_timeout + CLAIM_TTL

    async def run(self) -> tuple[Verdict, Claim | None]:
        """Tail the file until the owner stored it ("gone": nothing more to do), failed
        (raises its error), or died and this replica won the file ("adopt")."""
        fetch = self._fetch
        if self._claim.repo != fetch.repo:
            # The owner fetches for another repository of the same upstream: its bytes are
            # ours to serve once the upstream says our repository holds the blob too.
            await self._provenance.confirm(fetch.upstream, fetch.repo, self._digest, Kind.BLOB)
        fetch.temp_path = self._path
        log.info("following the fetch of %s by %s", self._digest, self._claim.node)
        checked = 0.0
        try:
            while True:
                if await self._stored():
                    # The owner verified it for its repository (ours, or one the upstream
                    # confirmed ours alongside) and records that in the index after the
                    # rename: remember it here, for when Redis is down.
                    self._provenance.followed(fetch.upstream.name, fetch.repo, self._digest)
                    return "gone", None
                now = time.monotonic()
                if now - checked >= (CHECK_EVERY if self._started else POLL * 2):
                    checked = now
                    verdict = await self._check(now)
                    if verdict is not None:
                        return verdict
                await asyncio.sleep(POLL)
        finally:
            if self._fd >= 0:
                os.close(self._fd)

    async def _stored(self) -> bool:
        """Advance with the file; True once the owner renamed it into place."""
        fetch, final = self._fetch, self._fetch.final_path
        if self._fd < 0:
            self._fd = await asyncio.to_thread(_open, self._path)
            if self._fd < 0:
                if self._started or not await asyncio.to_thread(final.is_file):
                    return False
                # Stored before we could open the temp file: our clients read the final one,
                # if it is this upstream's (another upstream may have stored the digest).
                if not await self._provenance.readable(
                    fetch.upstream, fetch.repo, self._digest, Kind.BLOB
                ):
                    return False
                size = await asyncio.to_thread(lambda: final.stat().st_size)
                fetch.begin(size)
                fetch.complete(size)
                return True
        on_disk = (await asyncio.to_thread(os.fstat, self._fd)).st_size
        if self._size is not None and on_disk > self._size:
            raise UpstreamUnavailable(f"the shared file of {self._digest} outgrew its size")
        if self._started and on_disk > fetch.written:
            fetch.advance(on_disk)
            self._grew = time.monotonic()
        if self._size is not None and on_disk < self._size:
            return False
        # The size comes from the renamed file itself: ``on_disk`` was measured before the
        # rename and may predate the owner's last writes.
        stored = await asyncio.to_thread(_stored_size, final, self._fd)
        if stored is None:
            return False
        fetch.begin(stored)
        fetch.complete(stored)
        return True

    async def _check(self, now: float) -> tuple[Verdict, Claim | None] | None:
        """Read the claim: start, fail, or take over when the owner is gone."""
        try:
            current = await self._claims.read(self._fetch.digest, self._fetch.upstream.name)
        except RedisUnavailable:
            if now - self._grew > self._stall:
                raise UpstreamUnavailable(
                    f"the fetch of {self._digest} by {self._claim.node} stopped and redis "
                    "is unreachable"
                ) from None
            return None
        if current is None:
            if self._missing_since is None:
                self._missing_since = now
            if now - self._missing_since < GRACE:
                return None
            taken = await self._take_over()
            if taken is None:
                return None  # redis could not answer: keep following, look again soon
            if taken[0] != "follow" or taken[1] is None:
                return taken
            current = taken[1]
        self._missing_since = None
        if current.state == "failed":
            final = self._fetch.final_path
            if self._fd >= 0 and await asyncio.to_thread(_stored_size, final, self._fd) is not None:
                return None  # stored after all; the next look at the file completes it
            raise current.error or UpstreamUnavailable(f"the fetch of {self._digest} failed")
        if current.file != self._claim.file:
            # Another file is being fetched (only after Redis lost its data): ours may still
            # be finished by its live owner, so keep following it while it grows.
            if now - self._grew > self._stall:
                raise UpstreamUnavailable(f"the fetch of {self._digest} was abandoned")
            return None
        if self._size is None:
            self._size = current.size
        if current.started and self._fd >= 0 and not self._started:
            self._started = True
            self._grew = now
            self._fetch.begin(self._size)
        return None

    async def _take_over(self) -> tuple[Verdict, Claim | None] | None:
        """The owner is gone: claim its file (only that file) to continue the download.
        None when Redis cannot answer."""
        claim = self._claim
        if self._fd >= 0 and not await asyncio.to_thread(_same_file, self._path, self._fd):
            raise UpstreamUnavailable(f"the fetch of {self._digest} by {claim.node} failed")
        try:
            verdict, taken = await self._claims.claim(
                self._fetch.digest,
                self._fetch.upstream.name,
                token=self._token,
                file=claim.file,
                repo=self._fetch.repo,
                require_file=claim.file,
            )
        except RedisUnavailable:
            return None
        if verdict in ("gone", "alone") or taken is None or taken.file != claim.file:
            raise UpstreamUnavailable(f"the fetch of {self._digest} by {claim.node} failed")
        if verdict == "adopt":
            log.warning(
                "the replica fetching %s (%s) died or stalled: continuing its download here",
                self._digest,
                claim.node,
            )
        return verdict, taken


def _open(path: Path) -> int:
    # No symbolic link: the file is a temp file of the store, never something it points at.
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return -1
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        log.warning("the shared temp file %s is a symbolic link: not following it", path)
        raise UpstreamUnavailable("the shared download cannot be read") from None


def _stored_size(final: Path, fd: int) -> int | None:
    """The blob's size if ``final`` (its place under blobs/) is the file open as ``fd``,
    i.e. the owner verified it and renamed it into place; None if not (yet)."""
    try:
        a = final.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    b = os.fstat(fd)
    return a.st_size if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else None


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = path.stat(), os.fstat(fd)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
