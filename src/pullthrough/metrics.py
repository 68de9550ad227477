"""Prometheus metrics of one mirror, in a registry of its own (injected, never global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Every metric the mirror exposes at ``http.debug.prometheus.path``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pullthrough_requests",
            "Client requests by method, kind and status.",
            ["method", "kind", "status"],
            registry=r,
        )
        # Up to the handler's return: for a streamed blob that includes the transfer, so the
        # buckets reach minutes.
        self.request_duration = Histogram(
            "pullthrough_request_duration_seconds",
            "Time to answer a client request, by route kind.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.cache = Counter(
            "pullthrough_cache",
            "Cache lookups by kind (manifest, blob), result (hit, miss, stale) and upstream.",
            ["kind", "result", "upstream"],
            registry=r,
        )
        self.served_bytes = Counter(
            "pullthrough_served_bytes",
            "Blob bytes sent to clients, by source "
            "(cache: a stored file; fetch: a fetch in progress; passthrough: not kept).",
            ["source"],
            registry=r,
        )
        self.upstream_bytes = Counter(
            "pullthrough_upstream_bytes",
            "Blob bytes received from each upstream.",
            ["upstream"],
            registry=r,
        )
        self.passthrough_bytes = Counter(
            "pullthrough_passthrough_bytes",
            "Bytes fetched but not kept (disk full or over "
            "mirror.maxsize with nothing left to evict).",
            ["upstream"],
            registry=r,
        )
        self.fetches_in_flight = Gauge(
            "pullthrough_fetches_in_flight", "Blob fetches running now.", registry=r
        )
        self.coalesced = Counter(
            "pullthrough_coalesced_waiters",
            "Requests that joined work already under way "
            "instead of asking the upstream again, by kind (blob, tag).",
            ["kind"],
            registry=r,
        )
        self.revalidations = Counter(
            "pullthrough_tag_revalidations",
            "Upstream HEADs asking what a tag points at.",
            ["upstream"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "pullthrough_upstream_errors",
            "Upstream failures by upstream and kind (the OCI code the client would see).",
            ["upstream", "kind"],
            registry=r,
        )
        self.upstream_stalls = Counter(
            "pullthrough_upstream_stalls",
            "Blob downloads that heard nothing from the upstream for the stall window "
            "(mirror.upstream_stall_timeout), by upstream.",
            ["upstream"],
            registry=r,
        )
        self.upstream_resumes = Counter(
            "pullthrough_upstream_resumes",
            "Blob downloads resumed with a Range request after a stall or a broken "
            "connection, by upstream.",
            ["upstream"],
            registry=r,
        )
        self.evictions = Counter(
            "pullthrough_evictions",
            "Objects removed from the store, by reason (expired, evicted).",
            ["reason"],
            registry=r,
        )
        self.evicted_bytes = Counter(
            "pullthrough_evicted_bytes",
            "Bytes removed from the store, by reason.",
            ["reason"],
            registry=r,
        )
        self.corrupt_blobs = Counter(
            "pullthrough_corrupt_blobs",
            "Stored blobs found not to match their digest (then removed and fetched again "
            "on the next request), by where: read (as a client was sent it), scrub (the "
            "background re-hash).",
            ["found"],
            registry=r,
        )
        self.scrubbed_bytes = Counter(
            "pullthrough_scrubbed_bytes",
            "Stored bytes re-hashed by the background scrub (mirror.scrub_rate).",
            registry=r,
        )
        self.store_bytes = Gauge(
            "pullthrough_store_bytes", "Bytes the store holds (at the last sweep).", registry=r
        )
        self.store_limit_bytes = Gauge(
            "pullthrough_store_limit_bytes",
            "mirror.maxsize in bytes (at the last sweep); absent without a limit.",
            registry=r,
        )
        self.store_objects = Gauge(
            "pullthrough_store_objects",
            "Objects the store holds (at the last sweep).",
            registry=r,
        )
        self.pinned_bytes = Gauge(
            "pullthrough_pinned_bytes",
            "Bytes kept for good by pins (at the last sweep with mirror.maxsize).",
            registry=r,
        )
        self.pins_over_limit = Gauge(
            "pullthrough_pins_over_limit",
            "1 when pinned content alone is over mirror.maxsize (only unpinned is evicted).",
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "pullthrough_upstream_ratelimit_remaining",
            "Pulls the upstream says remain (ratelimit-remaining), where it says.",
            ["upstream"],
            registry=r,
        )
        # mirror.sync, labelled by entry (``upstream/repository``).
        self.sync_last_run = Gauge(
            "pullthrough_sync_last_run_timestamp_seconds",
            "When the last run of each mirror.sync entry ended (Unix time).",
            ["entry"],
            registry=r,
        )
        self.sync_tags = Counter(
            "pullthrough_sync_tags",
            "Tags a mirror.sync run brought up to date.",
            ["entry"],
            registry=r,
        )
        self.sync_bytes = Counter(
            "pullthrough_sync_bytes",
            "Bytes mirror.sync runs fetched from upstreams (manifests and blobs).",
            ["entry"],
            registry=r,
        )
        self.sync_errors = Counter(
            "pullthrough_sync_errors",
            "Tags a mirror.sync run could not bring up to date, and runs that failed.",
            ["entry"],
            registry=r,
        )

        self.upstream_circuit = Gauge(
            "pullthrough_upstream_circuit",
            "1 for the state each upstream's circuit breaker is in (closed: asked as "
            "usual; open: believed down; half-open: one probe under way), 0 for the others.",
            ["upstream", "state"],
            registry=r,
        )
        self.upstream_downloads = Gauge(
            "pullthrough_upstream_downloads",
            "Blob downloads from each upstream holding a slot now "
            "(at most mirror.upstream_max_downloads).",
            ["upstream"],
            registry=r,
        )
        self.upstream_refused = Counter(
            "pullthrough_upstream_refused",
            "Requests answered 503 without asking the upstream, by reason: circuit_open "
            "(believed down, a probe under way), downloads (download cap reached), "
            "metadata (every manifest request slot busy).",
            ["upstream", "reason"],
            registry=r,
        )

    def forget_upstream(self, name: str) -> None:
        """Remove every series labelled with upstream ``name`` (an ad-hoc upstream given
        back: names clients choose must not grow the exposition without end)."""
        for metric in (
            self.cache,
            self.upstream_bytes,
            self.passthrough_bytes,
            self.revalidations,
            self.upstream_errors,
            self.ratelimit_remaining,
            self.upstream_circuit,
            self.upstream_downloads,
            self.upstream_refused,
        ):
            metric.remove_by_labels({"upstream": name})

    def add_cluster(self) -> ClusterMetrics:
        """The cluster's metrics (``mirror.cluster``), registered only in cluster mode."""
        return ClusterMetrics(self.registry)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class ClusterMetrics:
    """What a replica sees of the cluster: Redis, who fetched what, the sweeper lease."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.redis_up = Gauge(
            "pullthrough_cluster_redis_up",
            "1 while Redis answers; 0 while coordination is suspended.",
            registry=r,
        )
        self.fetches = Counter(
            "pullthrough_cluster_fetches",
            "Blob fetches by this replica's part: own (downloaded here), follow (streamed "
            "from another replica's download), adopt (taken over from a dead owner), "
            "stored (found stored on claiming), alone (Redis unreachable: uncoordinated).",
            ["role"],
            registry=r,
        )
        self.sweeper = Gauge(
            "pullthrough_cluster_sweeper",
            "1 while this replica holds the sweeper lease (it sweeps the shared store).",
            registry=r,
        )
