"""One upstream fetch per (upstream, digest) across replicas that share a bucket
(``storage.s3``) and Redis, but no filesystem.

Claims are the same as with a shared store (``cluster.claims``); what a claim's file means
differs: the owner's temp file is on the owner's own disk, so nobody else can tail it.

- **own**: the replica that wins the claim downloads as one process would, into its local
  staging, streaming to its own clients; the verified blob is uploaded to the bucket and
  recorded in the shared index (``mirror.bucket_tier``), and only then is the claim
  released. The lease is ``cluster.fetching``'s: renewed while bytes arrive and, once the
  digest matched, through the upload.
- **stream from the owner** (with ``mirror.cluster.secret``, ``cluster.peers``): a replica
  that loses the race reads the owner's download over HTTP into its own temp file, its
  clients getting bytes as they come (the last once the digest matched here). It keeps its
  copy, remembers that its clients may read it, and uploads nothing: the owner does.
- **wait, then read from the bucket** (without a secret, or while the owner cannot be
  read): the replica waits until the claim ends, then reads the blob from the bucket like
  its own cache miss. The upstream is asked once either way.
- **the owner dies**: its claim lapses (``CLAIM_TTL``). A replica that was streaming from
  it keeps the bytes it has: it continues the same temp file from the bucket, from the
  claim's next owner, or, claiming it itself, from the upstream with a Range request, so
  its clients' transfers carry on. A replica with nothing yet starts from scratch (the
  dead owner's partial bytes were on its own disk).

Without Redis a replica fetches alone, as with a shared store. Who may read a digest is
``mirror.provenance``'s decision, asked before a blob another replica stored is read and
before a client of another repository shares the owner's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from pullthrough.cluster.claims import CLAIM_TTL, Claim
from pullthrough.cluster.connection import RedisUnavailable
from pullthrough.cluster.fetching import ClusterFetches
from pullthrough.cluster.peers import PeerLost, Peers
from pullthrough.errors import UpstreamUnavailable
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.provenance import Kind
from pullthrough.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from pullthrough.mirror.bucket_tier import BucketTier

log = logging.getLogger(__name__)

WAIT_POLL = 0.1  # how often a waiting replica looks at the claim
# A claim whose owner never started (or stopped progressing) has lapsed by then at the
# latest; a claim that merely changes hands restarts the wait.
MAX_ROUNDS = 20


class BucketClusterFetches(ClusterFetches):
    """Drives local Fetches so that replicas on one bucket fetch each blob once."""

    tier: BucketTier
    peers: Peers | None = None  # None without mirror.cluster.secret: followers wait

    async def _drive(self, fetch: Fetch) -> None:
        tier = self.tier
        if tier.from_bucket(fetch) or fetch.spilled_at is not None:
            await fetch.download()  # a read of the bucket, or one that keeps nothing
            return
        digest = fetch.digest
        # Once a download into the fetch's temp file began (from a peer, or as the owner
        # before losing the claim), every later source continues that file: its clients
        # have bytes from it already.
        begun = False
        confirmed = False  # the upstream said this repository holds the blob
        for _ in range(MAX_ROUNDS):
            if await self._in_bucket(fetch):
                await self._read_back(fetch, adopt=begun)
                return
            kept = fetch.temp_path
            token, verdict, claim = await self._claim(fetch)
            if begun:
                fetch.temp_path = kept  # a claim of ours moves the file to its path (below)
            if verdict == "alone" or claim is None:
                self._counted.labels("alone").inc()
                if not begun:
                    fetch.temp_path = fetch.store.temp_path(digest)
                fetch.use_source(fetch.upstream)
                await fetch.download(adopt=begun)
                return
            if verdict in ("own", "adopt"):
                # "adopt": the owner before us died; its partial file was on its own disk,
                # so ours starts empty (a new local file under the claim's id), or with
                # what this replica had read from it.
                self._counted.labels(verdict).inc()
                if verdict == "adopt":
                    log.warning(
                        "the replica fetching %s (%s) died or stalled: fetching it here",
                        digest,
                        claim.node,
                    )
                if begun:
                    await asyncio.to_thread(os.replace, kept, claim.path)
                fetch.use_source(fetch.upstream)
                verdict, claim = await self._own(fetch, claim, token, adopt=begun)
                begun = True
                if verdict == "gone" or claim is None:
                    return
            self._counted.labels("follow").inc()
            source = self._peer_of(claim, fetch)
            if source is None:
                await self._wait(fetch, claim)
                continue
            if claim.repo != fetch.repo and not confirmed:
                # The owner fetches for another repository of the same upstream: its bytes
                # are ours to serve once the upstream says ours holds the blob too.
                await self._provenance.confirm(fetch.upstream, fetch.repo, str(digest), Kind.BLOB)
                confirmed = True
            if await self._from_peer(fetch, claim, source, adopt=begun):
                return
            begun = True
            await self._wait(fetch, claim, new_owner=True)
        raise UpstreamUnavailable(f"the fetch of {digest} kept changing hands; try again")

    def _peer_of(self, claim: Claim, fetch: Fetch) -> UpstreamClient | None:
        """The claim's owner as a source of the blob, if this replica may stream from it."""
        if self.peers is None or claim.node == self._c.node:
            return None  # (our own claim from before a restart: nothing to read there)
        source = self.peers.source(claim.node, fetch.upstream)
        if source is None:
            log.warning(
                "claim of %s names %r, not a replica's URL: waiting", fetch.digest, claim.node
            )
        return source

    async def _from_peer(
        self, fetch: Fetch, claim: Claim, source: UpstreamClient, *, adopt: bool
    ) -> bool:
        """Stream the blob from the replica fetching it into this replica's temp file,
        verified as an upstream's. True when the fetch ended (stored here, or failed);
        False when the owner could not be read: the file is left for another source."""
        if not adopt:
            fetch.temp_path = fetch.store.temp_path(fetch.digest)
        fetch.use_source(source)
        log.info("streaming %s from %s, which fetches it", fetch.digest, claim.node)
        try:
            await fetch.download(adopt=adopt)
        except PeerLost as exc:
            log.info("%s; looking for %s elsewhere", exc.message, fetch.digest)
            return False
        return True

    async def _in_bucket(self, fetch: Fetch) -> bool:
        """Whether the bucket holds the blob (the shared index says so) and this fetch's
        (upstream, repository) may read it."""
        if await self.tier.size(fetch.digest) is None:
            return False
        return await self._provenance.readable(
            fetch.upstream, fetch.repo, str(fetch.digest), Kind.BLOB
        )

    async def _read_back(self, fetch: Fetch, *, adopt: bool) -> None:
        """Complete ``fetch`` from the bucket: its clients read the bucket's bytes as they
        land in this replica's local cache, verified like an upstream's. ``adopt``: the
        temp file holds the first bytes already (read from a peer): the rest is asked for
        with a Range request."""
        self._counted.labels("stored").inc()
        fetch.use_source(self.tier.client_of())
        if not adopt:
            fetch.temp_path = fetch.store.temp_path(fetch.digest)
        await fetch.download(adopt=adopt)

    async def _wait(self, fetch: Fetch, claim: Claim, *, new_owner: bool = False) -> None:
        """Until the claim on the digest ends: stored (the caller reads the bucket), failed
        (raises its error), or lapsed (the caller claims it); with ``new_owner`` also when
        another replica takes it over (the caller streams from that one). Redis going away
        while waiting ends the wait too: the caller then fetches alone."""
        log.info("waiting for the fetch of %s by %s", fetch.digest, claim.node)
        deadline = time.monotonic() + fetch.upstream.config.read_timeout + 2 * CLAIM_TTL
        while True:
            await asyncio.sleep(WAIT_POLL)
            try:
                current = await self._claims.read(fetch.digest, fetch.upstream.name)
            except RedisUnavailable:
                return
            if current is None:
                return
            if current.state == "failed":
                raise current.error or UpstreamUnavailable(
                    f"the fetch of {fetch.digest} by {current.node} failed"
                )
            if current.owner != claim.owner:
                if new_owner:
                    return
                claim = current  # taken over: wait for the new owner
                deadline = time.monotonic() + fetch.upstream.config.read_timeout + 2 * CLAIM_TTL
            elif time.monotonic() > deadline and not current.started:
                # An owner that never got an answer from the upstream: let its claim lapse.
                with contextlib.suppress(RedisUnavailable):
                    if await self._claims.read(fetch.digest, fetch.upstream.name) is None:
                        return
                deadline = time.monotonic() + CLAIM_TTL
