"""Three replicas, one shared store, one Redis: the cluster asks the upstream once."""

from __future__ import annotations

import threading
import time

import pytest

from tests.cluster.conftest import ReplicaFactory
from tests.cluster.pulling import Pull, pull
from tests.support import MiB
from tests.support.images import ImageFactory
from tests.support.proxy import RecordingProxy, exchanges_summary

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]

CLIENTS = 30


def test_thirty_clients_on_three_replicas_cause_one_upstream_fetch_per_blob(
    image_factory: ImageFactory, replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    image = image_factory("library/clustered", layers=(96 * MiB, 24 * MiB, 3 * MiB))
    group = replicas(upstream_proxy.url, config={"mirror": {"tag_freshness": "1m"}})
    upstream_proxy.reset()
    upstream_proxy.blob_rate = 64 * MiB  # a download takes a while: all clients overlap

    results = [Pull(group[i % len(group)].host) for i in range(CLIENTS)]
    start = threading.Event()
    threads = [threading.Thread(target=pull, args=(r.host, image, r, start)) for r in results]
    for t in threads:
        t.start()
    began = time.monotonic()
    start.set()
    for t in threads:
        t.join(180)
    wall = time.monotonic() - began

    assert [r.error for r in results if r.error] == []
    wanted = {image.digest, *image.blob_digests}
    assert all(set(r.verified) == wanted for r in results)

    summary = exchanges_summary(upstream_proxy.requests())
    blob_bytes = 0
    for digest in image.blob_digests:
        gets = upstream_proxy.requests("GET", f"/blobs/{digest}")
        assert len(gets) == 1, summary  # one fetch across the cluster, none per replica
        blob_bytes += gets[0].bytes_sent
    total = sum(image.source.blob_file(d).stat().st_size for d in image.blob_digests)
    assert blob_bytes == total
    assert upstream_proxy.count("HEAD", "/manifests/") == 1, summary  # one revalidation
    assert upstream_proxy.count("GET", "/manifests/") == 1, summary
    assert upstream_proxy.count("HEAD", "/blobs/") == 0, summary
    assert set(image.blob_digests) <= set(group[0].stored_files())
    # Every replica served clients, and at least one streamed another replica's download.
    following = [r for r in group if "following the fetch of" in r.log_text()]
    assert following, "no replica followed another's fetch"
    seconds = sorted(r.seconds for r in results)
    print(
        f"\n{CLIENTS} clients on {len(group)} replicas, {total / MiB:.0f} MiB of blobs: "
        f"wall {wall:.1f}s, pull median {seconds[len(seconds) // 2]:.1f}s max "
        f"{seconds[-1]:.1f}s; upstream blob bytes {blob_bytes} = {blob_bytes / total:.3f} x "
        f"the image; {len(following)} replicas followed another's fetch"
    )


def test_small_blobs_are_fetched_once_however_close_together_the_requests(
    image_factory: ImageFactory, replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    # Downloads of a few KiB end within milliseconds: a replica that missed the store just
    # before another stored the blob must not fetch it again once the claim is released.
    image = image_factory("library/tiny", layers=(8 * 1024,) * 16)
    group = replicas(upstream_proxy.url, config={"mirror": {"tag_freshness": "1m"}})
    upstream_proxy.reset()
    results = [Pull(group[i % len(group)].host) for i in range(CLIENTS)]
    threads = [threading.Thread(target=pull, args=(r.host, image, r)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.error for r in results if r.error] == []
    summary = exchanges_summary(upstream_proxy.requests())
    for digest in image.blob_digests:
        assert upstream_proxy.count("GET", f"/blobs/{digest}") == 1, summary
