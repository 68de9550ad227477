"""Tag revalidation across replicas: one upstream HEAD per tag per freshness window, and
with ``tag_freshness: 0`` one HEAD per burst of concurrent requests."""

from __future__ import annotations

import hashlib
import threading

import pytest

from tests.cluster.conftest import ReplicaFactory
from tests.cluster.pulling import Pull, pull
from tests.support.images import MANIFEST_ACCEPT, ImageFactory, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy, exchanges_summary

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]


def _manifests_at_once(group: list[MirrorProcess], image: PushedImage, per_replica: int) -> None:
    statuses: list[tuple[int, str]] = []

    def get(host: str) -> None:
        resp = http_request(
            "GET",
            f"http://{host}/v2/{image.repo}/manifests/{image.tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=30,
        )
        statuses.append((resp.status, "sha256:" + hashlib.sha256(resp.body).hexdigest()))

    threads = [threading.Thread(target=get, args=(r.host,)) for r in group * per_replica]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [(200, image.digest)] * len(threads)


def test_concurrent_revalidations_of_a_tag_coalesce_across_replicas_without_freshness(
    image_factory: ImageFactory, replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/tagged", layers=(64 * 1024,))
    group = replicas(upstream_proxy.url)  # tag_freshness: 0s, the default
    warm = Pull(group[0].host)
    pull(group[0].host, image, warm)
    assert warm.error == ""
    upstream_proxy.reset()
    # A slow HEAD: every request of the burst arrives while it is in flight.
    upstream_proxy.fault_path_contains = "/manifests/"
    upstream_proxy.stall_seconds = 1.0

    _manifests_at_once(group, image, per_replica=4)
    summary = exchanges_summary(upstream_proxy.requests())
    assert upstream_proxy.count("HEAD", "/manifests/") == 1, summary
    assert upstream_proxy.count("GET", "/manifests/") == 0, summary  # served from the store

    # Freshness 0: a later request revalidates again.
    _manifests_at_once(group[1:2], image, per_replica=1)
    assert upstream_proxy.count("HEAD", "/manifests/") == 2


def test_one_revalidation_per_freshness_window_across_replicas(
    image_factory: ImageFactory, replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/fresh", layers=(64 * 1024,))
    group = replicas(upstream_proxy.url, config={"mirror": {"tag_freshness": "1m"}})
    upstream_proxy.reset()
    for replica in group * 3:  # one after another, each replica several times
        _manifests_at_once([replica], image, per_replica=1)
    summary = exchanges_summary(upstream_proxy.requests())
    assert upstream_proxy.count("HEAD", "/manifests/") == 1, summary
    assert upstream_proxy.count("GET", "/manifests/") == 1, summary
