"""``pullthrough offline`` in cluster mode: the switch lives in Redis, and every replica
follows it (serving what the cluster cached, sending the upstream nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_offline_switch import ACCEPT, _offline, pullthrough, wait_offline
from tests.support.images import ImageSet, pull_dir
from tests.support.net import free_port, http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_every_replica_follows_the_offline_switch(
    replicas, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    cached, uncached = images.oci_small, images.multi
    group, debugs = [], []
    for _ in range(2):
        port = free_port()
        debugs.append(f"http://127.0.0.1:{port}")
        group += replicas(
            upstream_proxy.url, n=1, config={"http": {"debug": {"addr": f"127.0.0.1:{port}"}}}
        )
    pull_dir(cached.on(group[0].host), tmp_path / "warm")

    done = pullthrough("offline", str(group[0].config_path), "docker.io", "on")
    assert done.returncode == 0, done.stderr
    for debug in debugs:
        wait_offline(debug, "docker.io", True)
    upstream_proxy.reset()
    for replica in group:
        pull_dir(cached.on(replica.host), tmp_path / f"offline-{replica.port}")
        got = http_request(
            "GET", f"{replica.url}/v2/library/multi/manifests/{uncached.tag}", headers=ACCEPT
        )
        assert got.status == 503 and b"docker.io is offline" in got.body
    assert upstream_proxy.requests() == []

    # Switched on through the other replica's config: both follow.
    done = pullthrough("offline", str(group[1].config_path), "docker.io", "off")
    assert done.returncode == 0, done.stderr
    for debug in debugs:
        wait_offline(debug, "docker.io", False)
    assert not any(_offline(d, "docker.io") for d in debugs)
    pull_dir(uncached.on(group[1].host), tmp_path / "online")
