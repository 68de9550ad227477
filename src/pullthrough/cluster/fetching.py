"""One fetch per (upstream, digest) across the cluster.

Each replica still has its local Fetch per (upstream, digest) (its clients read it exactly
as in one process), but the Fetch is driven from here:

- **own**: this replica won the claim. It downloads as one process would, into the temp
  file the claim names (by an id: the path is derived here, never read from Redis),
  renewing the claim while bytes arrive. Before each write it makes sure the claim is
  still its own: a replica that stalled and lost it stops writing and follows the one
  that took over (same file, so its clients carry on).
- **follow** (``follow.py``): another replica owns the same upstream's download; this one
  tails its temp file in the shared store and never asks the upstream for the blob.
- **take over**: the owner died; a follower adopts the same file, re-hashes what is there
  and asks the upstream for the rest with a Range request.

Whose bytes a client may read is ``mirror.provenance``'s decision, asked here before a
blob another replica stored (or began for another repository) is served.

Without Redis, or with a malformed claim in it, a replica fetches alone (a miss is
downloaded locally, without a claim); a follower whose Redis went away keeps tailing the
file and gives up if it stops growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from pathlib import Path

from prometheus_client import Counter

from pullthrough.cluster.claims import CLAIM_TTL, Claim, Claims, Verdict
from pullthrough.cluster.connection import Coordination, RedisUnavailable
from pullthrough.cluster.follow import Follower
from pullthrough.errors import RegistryError, UpstreamUnavailable
from pullthrough.mirror.fetch import ClaimLost, Fetch
from pullthrough.mirror.provenance import Kind, Provenance
from pullthrough.store.blobs import new_temp_id

log = logging.getLogger(__name__)

# The owner renews its claim this often while its download makes progress.
RENEW_EVERY = 1.0
# The owner stops writing this long before its claim could have expired without it
# knowing (a slow renewal, clocks): a replica that took over never shares the file.
LEASE_MARGIN = 1.0


class ClusterFetches:
    """Drives local Fetches so that the cluster fetches each (upstream, digest) once."""

    def __init__(
        self,
        coordination: Coordination,
        claims: Claims,
        provenance: Provenance,
        *,
        counted: Counter,
    ) -> None:
        self._c = coordination
        self._claims = claims
        self._provenance = provenance
        self._counted = counted  # fetches by role (pullthrough_cluster_fetches)

    async def run(self, fetch: Fetch) -> None:
        """Own, follow or take over the download of ``fetch.digest`` until it is stored
        or has failed, then settle the fetch (its readers learn which)."""
        try:
            await self._drive(fetch)
            if not fetch.finished:  # no path above should end here; never leave readers waiting
                raise UpstreamUnavailable(f"the fetch of {fetch.digest} ended without a result")
        except RegistryError as exc:
            if not fetch.finished:
                fetch.fail(exc)
        except Exception as exc:
            log.exception("cluster fetch of %s failed", fetch.digest)
            if not fetch.finished:
                fetch.fail(UpstreamUnavailable(f"fetching {fetch.digest} failed: {exc}"))
        finally:
            fetch.settle()

    async def _drive(self, fetch: Fetch) -> None:
        if fetch.spilled_at is not None:
            await fetch.download()  # keeps nothing: there is no file to share
            return
        digest, upstream = fetch.digest, fetch.upstream.name
        token, verdict, claim = await self._claim(fetch)
        if verdict == "alone":
            self._counted.labels("alone").inc()
            # Not the file the claim may name after all: nobody else may adopt this one.
            fetch.temp_path = fetch.store.temp_path(digest)
            await fetch.download()
            return
        if verdict in ("own", "adopt") and claim is not None:
            try:
                if await self._stored_readable(fetch):
                    self._counted.labels("stored").inc()
                    with contextlib.suppress(RedisUnavailable):
                        await self._claims.done(digest, upstream, token=token, file=claim.file)
                    return
                if claim.origin != fetch.repo:
                    # The partial file's bytes were fetched for another repository; the rest
                    # would come for ours, but the file may be whole already: the upstream
                    # must say ours holds the blob before its clients read those bytes.
                    await self._provenance.confirm(
                        fetch.upstream, fetch.repo, str(digest), Kind.BLOB
                    )
            except BaseException:
                with contextlib.suppress(RedisUnavailable):
                    await self._claims.release(digest, upstream, token=token, file=claim.file)
                raise
        while claim is not None:
            if verdict in ("own", "adopt", "follow"):
                self._counted.labels(verdict).inc()
            if verdict in ("own", "adopt"):
                verdict, claim = await self._own(fetch, claim, token, adopt=verdict == "adopt")
            elif verdict == "follow":
                follower = Follower(self._claims, self._provenance, fetch, claim, token)
                verdict, claim = await follower.run()
            else:
                return

    async def _claim(self, fetch: Fetch) -> tuple[str, Verdict, Claim | None]:
        """Claim the download of ``fetch.digest`` with a new token and temp file (the
        fetch's temp path is set to it): the token, the verdict and the claim found;
        "alone" when Redis cannot answer."""
        token = f"{self._c.node}#{uuid.uuid4().hex[:12]}"
        file = new_temp_id()
        fetch.temp_path = fetch.store.temp_path(fetch.digest, file)
        try:
            verdict, claim = await self._claims.claim(
                fetch.digest, fetch.upstream.name, token=token, file=file, repo=fetch.repo
            )
        except RedisUnavailable:
            log.info("fetching %s without coordination (redis unreachable)", fetch.digest)
            return token, "alone", None
        return token, verdict, claim

    async def _stored_readable(self, fetch: Fetch) -> bool:
        """Whether the blob is stored and this fetch's (upstream, repository) may read it,
        completing the fetch with it if so.

        The owner before us renames the blob into place before it releases its claim: a
        replica that looked at the store just before the rename and claims just after the
        release must find the blob there, not download it again. But only that upstream's
        own download counts (``mirror.provenance``): a blob another upstream brought is
        downloaded again from this one."""
        stored = await asyncio.to_thread(_size_of, fetch.final_path)
        if stored is None:
            return False
        if not await self._provenance.readable(
            fetch.upstream, fetch.repo, str(fetch.digest), Kind.BLOB
        ):
            return False
        fetch.begin(stored)
        fetch.complete(stored)
        return True

    # --- owning --------------------------------------------------------------------------

    async def _own(
        self, fetch: Fetch, claim: Claim, token: str, *, adopt: bool
    ) -> tuple[Verdict, Claim | None]:
        digest, upstream = fetch.digest, fetch.upstream.name
        fetch.temp_path = claim.path  # derived from the digest and the file's id
        if fetch.size is None:
            fetch.size = claim.size  # known when adopting a dead owner's file
        if adopt:
            log.info("taking over the fetch of %s at %s", digest, claim.path)
        lease = _Lease(self._claims, fetch, token, claim)
        lease.announced = fetch.size is not None  # adopting: the upstream answered before
        fetch.guard = lease.check
        fetch.write_until = lease.writable_until
        download = asyncio.ensure_future(fetch.download(adopt=adopt))
        renewer = asyncio.ensure_future(self._renew(fetch, lease, download))
        try:
            await download
        except (ClaimLost, asyncio.CancelledError):
            if not lease.lost:
                raise  # cancelled from outside (shutting down)
            log.info("another replica took the fetch of %s over; following it", digest)
            return await self._after_loss(fetch, claim)
        finally:
            fetch.guard = fetch.write_until = None
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if lease.alone:
            return "gone", None
        with contextlib.suppress(RedisUnavailable):
            if fetch.verified:
                await self._claims.done(digest, upstream, token=token, file=claim.file)
            elif fetch.error is not None:
                await self._claims.failed(
                    digest, upstream, token=token, file=claim.file, error=fetch.error
                )
        return "gone", None

    async def _after_loss(self, fetch: Fetch, claim: Claim) -> tuple[Verdict, Claim | None]:
        try:
            current = await self._claims.read(fetch.digest, fetch.upstream.name)
        except RedisUnavailable:
            current = None
        # Follow the new owner's file, which is ours: the claim may already be gone again.
        return "follow", current if current is not None and current.file == claim.file else claim

    async def _renew(self, fetch: Fetch, lease: _Lease, download: asyncio.Future[None]) -> None:
        """Renew the claim while the download makes progress (or waits for the upstream to
        answer, which its time-outs bound); a hung download lets its claim expire. Ends
        with the download (not only when cancelled: asyncio.wait_for could swallow that)."""
        started = asyncio.ensure_future(fetch.started())
        last = -1
        try:
            while not download.done():
                if not lease.announced:
                    await asyncio.wait({started, download}, timeout=RENEW_EVERY)
                    if started.done():
                        if started.cancelled() or started.exception() is not None:
                            return  # it failed before it started; _own reports it
                        # Followers learn the size (and may start) now, not a second later.
                        lease.announced = True
                    progressed = True
                else:
                    await asyncio.sleep(RENEW_EVERY)
                    # Once the digest matched the bytes are final: what follows (fsync, rename,
                    # the index, and with a bucket the upload, seconds for a large layer) must
                    # not let the claim lapse, or a waiting replica would fetch it again.
                    progressed = fetch.written != last or fetch.matched
                if download.done():
                    return
                if fetch.spilled_at is not None:
                    # The store is full: the rest never reaches the shared file. Followers
                    # give up (their clients retry and fetch for themselves); ours go on via
                    # their taps.
                    await lease.abandon(
                        UpstreamUnavailable(f"the store cannot keep {fetch.digest}")
                    )
                    return
                if not progressed:
                    continue
                last = fetch.written
                if await lease.renew() == 0:
                    download.cancel()  # it may be stuck in a read: switch to following now
                    return
                if lease.alone:
                    return
        finally:
            started.cancel()


class _Lease:
    """The owner's hold on its claim, as far as it knows without asking Redis."""

    def __init__(self, claims: Claims, fetch: Fetch, token: str, claim: Claim) -> None:
        self._claims = claims
        self._fetch = fetch
        self._token = token
        self._file = claim.file
        self._origin = claim.origin
        self.deadline = time.monotonic() + CLAIM_TTL - LEASE_MARGIN
        self.announced = False  # the upstream answered: followers may start reading
        self.lost = False  # another replica owns the download of the same file
        self.alone = False  # another file is being fetched: go on without the cluster

    async def renew(self) -> int | None:
        """Renew now; the script's answer, None when Redis cannot answer."""
        fetch = self._fetch
        sent = time.monotonic()
        try:
            answer = await self._claims.renew(
                fetch.digest,
                fetch.upstream.name,
                token=self._token,
                file=self._file,
                size=fetch.size,
                started=self.announced,
                repo=fetch.repo,
                origin=self._origin,
            )
        except RedisUnavailable:
            # Nobody can take the claim over while Redis is down; go on, ask again soon.
            self.deadline = time.monotonic() + RENEW_EVERY
            return None
        if answer == 2 and await asyncio.to_thread(fetch.final_path.is_file):
            # It lapsed because another replica took over, finished and released it while
            # this one was stuck: the blob is stored, so follow (which completes at once).
            with contextlib.suppress(RedisUnavailable):
                await self._claims.done(
                    fetch.digest, fetch.upstream.name, token=self._token, file=self._file
                )
            answer = 0
        if answer in (1, 2):
            self.deadline = sent + CLAIM_TTL - LEASE_MARGIN
        elif answer == 0:
            self.lost = True
        else:
            self.alone = True
            log.warning(
                "another fetch of %s started while this replica's claim had lapsed; "
                "finishing this one without the cluster",
                fetch.digest,
            )
        return answer

    def writable_until(self) -> float:
        """Until when (monotonic time) the download thread may write to the shared temp
        file without ``check``: past the lease's deadline another replica may own it.
        Asked from the download thread (reads two flags and a float)."""
        if self.lost:
            return -math.inf
        return math.inf if self.alone else self.deadline

    async def check(self) -> None:
        """Called before each write to the shared temp file: raises ClaimLost once the
        file belongs to another replica."""
        if self.lost:
            raise ClaimLost()
        if self.alone or time.monotonic() < self.deadline:
            return
        if await self.renew() == 0:
            raise ClaimLost()

    async def abandon(self, error: RegistryError) -> None:
        fetch = self._fetch
        self.alone = True
        with contextlib.suppress(RedisUnavailable):
            await self._claims.failed(
                fetch.digest, fetch.upstream.name, token=self._token, file=self._file, error=error
            )


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
