"""A replica's part in the cluster: one Redis connection and everything that uses it."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pullthrough.cluster.claims import Claims
from pullthrough.cluster.connection import Coordination
from pullthrough.cluster.fetching import ClusterFetches
from pullthrough.cluster.flights import Flights
from pullthrough.cluster.index import RedisIndex
from pullthrough.cluster.sweeping import SweepLease, prepare_shared
from pullthrough.cluster.sync_claims import SyncClaims
from pullthrough.config import ConfigError
from pullthrough.config.model import ClusterConfig
from pullthrough.metrics import Metrics
from pullthrough.mirror.provenance import Provenance
from pullthrough.store.blobs import BlobStore

if TYPE_CHECKING:
    from pullthrough.cluster.bucket_fetching import BucketClusterFetches
    from pullthrough.cluster.peers import Peers
    from pullthrough.mirror.bucket_tier import BucketTier

log = logging.getLogger(__name__)

# Replicas are on one network: a peer that does not connect within this is not there. Its
# answer can take as long as the upstream's (it waits for it), hence the read time-out.
PEER_CONNECT_TIMEOUT = 2.0
PEER_READ_TIMEOUT = 60.0


class Cluster:
    """The shared index, fetch claims, coalesced upstream calls and the sweeper lease of
    one replica, over one Redis connection."""

    def __init__(
        self, config: ClusterConfig, store: BlobStore, *, gc_interval: float, metrics: Metrics
    ) -> None:
        self.config = config
        self.store = store
        self.coordination = Coordination(config)
        self.index = RedisIndex(self.coordination)
        self.claims = Claims(self.coordination, store)
        measured = metrics.add_cluster()
        self._counted_fetches = measured.fetches
        self.flights = Flights(self.coordination)
        self.sweep_turns = SweepLease(self.coordination, store, gc_interval)
        self.sync_claims = SyncClaims(self.coordination)  # mirror.sync: one replica per run
        self.peers: Peers | None = None  # storage.s3 with mirror.cluster.secret
        # Read when scraped: the connection and the lease keep these states already.
        measured.redis_up.set_function(lambda: 0.0 if self.coordination.suspended else 1.0)
        measured.sweeper.set_function(lambda: 1.0 if self.sweep_turns.held else 0.0)

    def fetches(self, provenance: Provenance) -> ClusterFetches:
        """The driver of this replica's blob fetches. ``provenance`` is the Mirror's (built
        on this cluster's index): it decides whose downloads a client may share."""
        return ClusterFetches(
            self.coordination, self.claims, provenance, counted=self._counted_fetches
        )

    def bucket_fetches(self, provenance: Provenance, tier: BucketTier) -> BucketClusterFetches:
        """The driver for replicas that share a bucket (storage.s3), not a filesystem."""
        from pullthrough.cluster.bucket_fetching import BucketClusterFetches
        from pullthrough.cluster.peers import Peers

        fetches = BucketClusterFetches(
            self.coordination, self.claims, provenance, counted=self._counted_fetches
        )
        fetches.tier = tier
        if self.config.secret:
            # Replicas stream a blob from the one fetching it (cluster.peers).
            self.peers = Peers(
                self.config.secret,
                connect_timeout=PEER_CONNECT_TIMEOUT,
                read_timeout=PEER_READ_TIMEOUT,
            )
            fetches.peers = self.peers
        return fetches

    async def start(self) -> None:
        """Prepare the shared store (its temp files are other replicas' downloads: kept;
        with a bucket the local store is this replica's own, and a crash's are dropped).
        Raises ConfigError when Redis refuses the configured password: unlike Redis
        being unreachable, waiting does not mend that."""
        if self.store.bucket is not None:
            await asyncio.to_thread(self.store.prepare)
        else:
            await asyncio.to_thread(prepare_shared, self.store)
        answers = await self.coordination.ping()
        if self.coordination.refused:
            raise ConfigError(
                f"mirror.cluster.redis.password: redis at {self.coordination.address} refused "
                "it (wrong, missing, or given where redis has none); set it with "
                "REGISTRY_MIRROR_CLUSTER_REDIS_PASSWORD or in the config file"
            )
        if answers:
            log.info(
                "cluster mode: replica %s, coordinating through redis at %s",
                self.config.advertise,
                self.coordination.address,
            )

    async def stop(self) -> None:
        if self.peers is not None:
            await self.peers.close()
        await self.coordination.close()
