"""Cluster mode (``mirror.cluster``): several replicas behind a load balancer share one
storage root (a shared filesystem) and coordinate through Redis.

- ``fetching``/``follow``/``claims``: one upstream download per digest across the cluster;
  the replicas that lose the claim stream the winner's temp file from the shared store;
  a dead owner's download is taken over and resumed from the bytes it left.
- ``flights``: one upstream HEAD per tag (per freshness window), one manifest GET.
- ``index``: the index (tags, links, sizes, access times) in Redis, shared.
- ``sweeping``: one sweeper at a time (a lease), and the shared temp directory.
- ``connection``: the Redis connection, and the fallback when Redis is unreachable (every
  replica keeps serving alone and picks coordination up again by itself).

``node.Cluster`` puts them together for ``pullthrough.mirror.service.Mirror``.
"""
