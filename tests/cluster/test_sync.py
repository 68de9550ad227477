"""``mirror.sync`` in cluster mode: of the replicas that share a config, one runs each
sync, once per interval (a claim in Redis), not every replica."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_sync import manifest_gets, sync_config
from tests.support.images import PushedImage
from tests.support.proxy import RecordingProxy
from tests.support.registry import Registry
from tests.support.tagging import put_tags

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_two_replicas_run_a_sync_once_not_twice(
    replicas, image_factory, upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    image: PushedImage = image_factory("library/clustersync", tag="base")
    wanted = put_tags(upstream, image, ["3.20", "3.21", "3.22"], distinct=True)
    upstream_proxy.reset()

    group = replicas(upstream_proxy.url, n=2, config=sync_config("library/clustersync", r"^3\.2"))

    deadline = time.monotonic() + 20
    while (set(wanted.values()) | set(image.blob_digests)) - set(group[0].stored_files(0.5)):
        assert time.monotonic() < deadline, group[0].log_tail(30) + group[1].log_tail(30)
        time.sleep(0.2)
    time.sleep(3.0)  # both replicas' schedulers have polled several times by now
    assert upstream_proxy.count("GET", "/tags/list") == 1
    heads = [e.path.rsplit("/", 1)[1] for e in upstream_proxy.requests("HEAD", "/manifests/")]
    # One HEAD per tag, and one more to learn the pull quota (this upstream sends none).
    assert set(heads) == set(wanted) and len(heads) == len(wanted) + 1
    assert manifest_gets(upstream_proxy) == set(wanted.values())
    assert len(upstream_proxy.requests("GET", "/manifests/")) == len(wanted)
    ran = ["sync mirror.sync[0]" in r.log_text() for r in group]
    assert sorted(ran) == [False, True]


def test_replicas_share_the_interval_instead_of_each_keeping_it(
    replicas, image_factory, upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    image: PushedImage = image_factory("library/clusterpace", tag="base")
    put_tags(upstream, image, ["3.20"], distinct=True)
    config = sync_config("library/clusterpace", r"^3\.2")
    config["mirror"]["sync"][0]["interval"] = "3s"
    upstream_proxy.reset()

    group = replicas(upstream_proxy.url, n=2, config=config)
    time.sleep(8.0)

    runs = sum(r.log_text().count("sync mirror.sync[0]") for r in group)
    listed = upstream_proxy.count("GET", "/tags/list")
    # About 8 s at one run per 3 s (plus the first at start) across the cluster; each
    # replica on its own would have run about twice as often.
    assert 2 <= runs <= 4, runs
    assert listed == runs
