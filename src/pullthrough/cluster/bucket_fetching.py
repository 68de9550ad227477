"""One upstream fetch per (upstream, digest) across replicas that share a bucket
(``storage.s3``) and Redis, but no filesystem.

Claims are the same as with a shared store (``cluster.claims``); what a claim's file means
differs: the owner's temp file is on the owner's own disk, so nobody else can tail it.

- **own**: the replica that wins the claim downloads as one process would, into its local
  staging, streaming to its own clients; the verified blob is uploaded to the bucket and
  recorded in the shared index (``mirror.bucket_tier``), and only then is the claim
  released. The lease is ``cluster.fetching``'s: renewed while bytes arrive.
- **wait, then read from the bucket**: a replica that loses the race waits until the claim
  ends. Its clients get their first byte once the owner has stored the blob: the replica
  then reads it from the bucket like its own cache miss (streamed through its local cache,
  the last byte held back until the digest matched). The upstream is asked once.
- **the owner dies**: its claim lapses (``CLAIM_TTL``) and the next replica to ask claims
  it and downloads from the start: the partial bytes were on the dead replica's disk.

Without Redis a replica fetches alone, as with a shared store. Who may read a digest is
``mirror.provenance``'s decision, asked before a blob another replica stored is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from pullthrough.cluster.claims import CLAIM_TTL, Claim
from pullthrough.cluster.connection import RedisUnavailable
from pullthrough.cluster.fetching import ClusterFetches
from pullthrough.errors import UpstreamUnavailable
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.provenance import Kind

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

    async def _drive(self, fetch: Fetch) -> None:
        tier = self.tier
        if tier.from_bucket(fetch) or fetch.spilled_at is not None:
            await fetch.download()  # a read of the bucket, or one that keeps nothing
            return
        digest = fetch.digest
        for _ in range(MAX_ROUNDS):
            if await self._in_bucket(fetch):
                await self._read_back(fetch)
                return
            token, verdict, claim = await self._claim(fetch)
            if verdict == "alone" or claim is None:
                self._counted.labels("alone").inc()
                fetch.temp_path = fetch.store.temp_path(digest)
                await fetch.download()
                return
            if verdict in ("own", "adopt"):
                # "adopt": the owner before us died; its partial file was on its own disk,
                # so ours starts empty (a new local file under the claim's id).
                self._counted.labels(verdict).inc()
                if verdict == "adopt":
                    log.warning(
                        "the replica fetching %s (%s) died or stalled: fetching it here",
                        digest,
                        claim.node,
                    )
                verdict, claim = await self._own(fetch, claim, token, adopt=False)
                if verdict == "gone" or claim is None:
                    return
            self._counted.labels("follow").inc()
            await self._wait(fetch, claim)
        raise UpstreamUnavailable(f"the fetch of {digest} kept changing hands; try again")

    async def _in_bucket(self, fetch: Fetch) -> bool:
        """Whether the bucket holds the blob (the shared index says so) and this fetch's
        (upstream, repository) may read it."""
        if await self.tier.size(fetch.digest) is None:
            return False
        return await self._provenance.readable(
            fetch.upstream, fetch.repo, str(fetch.digest), Kind.BLOB
        )

    async def _read_back(self, fetch: Fetch) -> None:
        """Complete ``fetch`` from the bucket: its clients read the bucket's bytes as they
        land in this replica's local cache, verified like an upstream's."""
        self._counted.labels("stored").inc()
        fetch.upstream = self.tier.client_of()
        fetch.temp_path = fetch.store.temp_path(fetch.digest)
        await fetch.download()

    async def _wait(self, fetch: Fetch, claim: Claim) -> None:
        """Until the claim on the digest ends: stored (the caller reads the bucket), failed
        (raises its error), or lapsed (the caller claims it). Redis going away while waiting
        ends the wait too: the caller then fetches alone."""
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
                claim = current  # taken over: wait for the new owner
                deadline = time.monotonic() + fetch.upstream.config.read_timeout + 2 * CLAIM_TTL
            elif time.monotonic() > deadline and not current.started:
                # An owner that never got an answer from the upstream: let its claim lapse.
                with contextlib.suppress(RedisUnavailable):
                    if await self._claims.read(fetch.digest, fetch.upstream.name) is None:
                        return
                deadline = time.monotonic() + CLAIM_TTL
