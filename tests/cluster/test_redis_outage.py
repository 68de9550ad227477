"""Redis stops in the middle of pulls: no pull fails (hits come from the store, misses are
fetched by each replica alone, a download in progress is finished and followed from the
shared file); Redis comes back empty: the replicas coordinate again by themselves."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.cluster.conftest import ReplicaFactory
from tests.cluster.pulling import Pull, pull
from tests.cluster.redis_server import RedisServer
from tests.support import MiB
from tests.support.images import ImageFactory, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import wait_until
from tests.support.proxy import RecordingProxy, exchanges_summary

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]


def _pull_all(group: list[MirrorProcess], image: PushedImage, per_replica: int) -> list[Pull]:
    results = [Pull(r.host) for r in group for _ in range(per_replica)]
    start = threading.Event()
    threads = [threading.Thread(target=pull, args=(p.host, image, p, start)) for p in results]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(120)
    return results


def test_pulls_survive_a_redis_outage_and_coordination_resumes(
    image_factory: ImageFactory,
    replicas: ReplicaFactory,
    upstream_proxy: RecordingProxy,
    redis_server: RedisServer,
) -> None:
    cached = [image_factory(f"library/outage-cached-{n}", layers=(2 * MiB,)) for n in range(2)]
    inflight = image_factory("library/outage-inflight", layers=(48 * MiB,))
    during = [image_factory(f"library/outage-new-{n}", layers=(3 * MiB,)) for n in range(3)]
    after = image_factory("library/outage-after", layers=(16 * MiB, 4 * MiB))
    group = replicas(upstream_proxy.url)
    for image in cached:
        assert [p.error for p in _pull_all(group[:1], image, 1)] == [""]
    upstream_proxy.blob_rate = 16 * MiB  # the 48 MiB layer takes 3 s: Redis stops meanwhile

    pool: list[PushedImage] = list(cached)
    done: list[Pull] = []
    stop = threading.Event()

    def keep_pulling(host: str, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            result = Pull(host)
            pull(host, rng.choice(pool), result)
            done.append(result)

    inflight_pulls = [Pull(r.host) for r in group for _ in range(2)]
    threads = [threading.Thread(target=pull, args=(p.host, inflight, p)) for p in inflight_pulls]
    threads += [
        threading.Thread(target=keep_pulling, args=(r.host, n)) for n, r in enumerate(group * 2)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the coordinated fetch of the big layer is under way
    redis_server.stop()
    outage = time.monotonic()
    pool.extend(during)  # uncached: each replica fetches them without coordination
    time.sleep(8.0)
    redis_server.start()  # same port, no data: every claim, lock and index entry is gone
    back = time.monotonic()
    wait_until(
        lambda: all("coordination resumed" in r.log_text() for r in group),
        timeout=30,
        message="every replica to resume coordination",
    )
    stop.set()
    for t in threads:
        t.join(120)

    pulls = [*inflight_pulls, *done]
    assert [p.error for p in pulls if p.error] == []
    during_outage = [p for p in pulls if outage <= p.finished <= back]
    assert len(during_outage) > 10
    assert all(p in during_outage for p in inflight_pulls)  # followed while redis was down
    for replica in group:
        assert "cluster coordination suspended" in replica.log_text()

    # Coordinated again: a new image pulled at once through every replica is fetched once.
    upstream_proxy.reset()
    upstream_proxy.blob_rate = 32 * MiB
    results = _pull_all(group, after, 3)
    assert [p.error for p in results if p.error] == []
    summary = exchanges_summary(upstream_proxy.requests())
    for digest in after.blob_digests:
        assert upstream_proxy.count("GET", f"/blobs/{digest}") == 1, summary
    assert upstream_proxy.count("GET", "/manifests/") == 1, summary
    print(
        f"\nredis down {back - outage:.1f}s: {len(pulls)} pulls, none failed "
        f"({len(during_outage)} finished while it was down); after recovery "
        f"{len(results)} clients on {len(group)} replicas fetched each blob of a new image "
        "once from the upstream"
    )


def test_cached_images_are_served_with_redis_and_the_upstream_both_down(
    image_factory: ImageFactory,
    replicas: ReplicaFactory,
    upstream_proxy: RecordingProxy,
    redis_server: RedisServer,
) -> None:
    image = image_factory("library/outage-both", layers=(2 * MiB,))
    group = replicas(upstream_proxy.url)
    assert [p.error for p in _pull_all(group, image, 1)] == ["", "", ""]
    group[0].stored_files()  # (waits until the downloads are stored and indexed)
    redis_server.stop()
    upstream_proxy.fail_status = 503
    # Each replica remembers the links and tags it used: the blobs are served from the
    # store and the tag stale, as one process would with its own index.
    assert [p.error for p in _pull_all(group, image, 2)] == [""] * 6
    for replica in group:
        assert "serving library/outage-both:v1 from cache (stale" in replica.log_text()
