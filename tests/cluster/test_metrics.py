"""Cluster metrics: each replica's part in a coordinated fetch, Redis up or down, and which
replica holds the sweeper lease, as Prometheus sees them."""

from __future__ import annotations

import time

import pytest
import redis

from pullthrough.cluster.connection import key
from tests.cluster.redis_server import RedisServer
from tests.support.images import ImageSet
from tests.support.net import free_port, http_request, metrics_of
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_replicas_report_their_part_redis_and_the_sweeper(
    replicas, upstream_proxy: RecordingProxy, images: ImageSet, redis_server: RedisServer
) -> None:
    debug = []
    started = []
    for _ in range(2):
        port = free_port()
        debug.append(f"http://127.0.0.1:{port}")
        started += replicas(upstream_proxy.url, n=1, config={
            "http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}},
            "mirror": {"gc_interval": "1s"},
        })
    first, second = started
    layer = images.oci_small.source.layer_digests[0]
    path = f"/v2/{images.oci_small.repo}/blobs/{layer}"
    assert http_request("GET", first.url + path, timeout=30).status == 200
    assert layer in first.stored_files()  # put in place just after the client's last byte
    # ... and indexed in Redis just after that: only then does the other replica find it.
    db = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    deadline = time.monotonic() + 10
    while not db.exists(key("blob", layer)):
        assert time.monotonic() < deadline, "the first replica never indexed the layer"
        time.sleep(0.02)
    db.close()
    assert http_request("GET", second.url + path, timeout=30).status == 200

    one, two = metrics_of(debug[0]), metrics_of(debug[1])
    assert one['pullthrough_cluster_fetches_total{role="own"}'] == 1
    # The second replica served it from the shared store: no fetch of any kind.
    assert not [k for k in two if k.startswith("pullthrough_cluster_fetches_total")]
    assert one["pullthrough_cluster_redis_up"] == 1 and two["pullthrough_cluster_redis_up"] == 1
    deadline = time.monotonic() + 10
    while one["pullthrough_cluster_sweeper"] + two["pullthrough_cluster_sweeper"] != 1:
        assert time.monotonic() < deadline, "no replica (or both) holds the sweeper lease"
        time.sleep(0.5)
        one, two = metrics_of(debug[0]), metrics_of(debug[1])

    redis_server.stop()
    other = sorted(images.multi.blob_digests)[0]  # a miss: it needs Redis to coordinate
    assert http_request(
        "GET", f"{first.url}/v2/{images.multi.repo}/blobs/{other}", timeout=30
    ).status == 200
    after = metrics_of(debug[0])
    assert after["pullthrough_cluster_redis_up"] == 0
    assert after['pullthrough_cluster_fetches_total{role="alone"}'] == 1
