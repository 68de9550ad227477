"""``mirror.sync`` as an operator relies on it: exactly the matching tags are fetched (from
a tag list of several pages), ``--dry-run`` fetches nothing, the pull quota's reserve is
left alone, a 429 is waited out, and the server runs the schedule by itself."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, http_request, wait_until
from tests.support.proxy import RecordingProxy
from tests.support.registry import Registry
from tests.support.tagging import put_tags

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def sync_config(repo: str, tags: str, **mirror: Any) -> dict[str, Any]:
    entry = {"upstream": "docker.io", "repository": repo, "tags": tags, "interval": "1h"}
    return {"mirror": {"sync": [entry], **mirror}}


def pullthrough_sync(mirror: MirrorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", "sync", str(mirror.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(None),
    )


def manifest_gets(proxy: RecordingProxy) -> set[str]:
    return {e.path.rsplit("/", 1)[1] for e in proxy.requests("GET", "/manifests/")}


def test_sync_fetches_exactly_the_matching_tags(
    image_factory, upstream: Registry, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image: PushedImage = image_factory("library/synced", tag="base")
    put_tags(upstream, image, [f"old-{i}" for i in range(100)], distinct=False)
    wanted = put_tags(upstream, image, [f"3.2{i}" for i in range(5)], distinct=True)
    put_tags(upstream, image, ["3.19", "3.20-rc", "4.20"], distinct=True)
    mirror = mirror_factory(
        upstream_proxy.url, config=sync_config("library/synced", r"^3\.2[0-9]$"), start=False
    )
    upstream_proxy.reset()
    upstream_proxy.tags_page = 50  # Docker Hub pages its tag lists

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    assert "5 of 5 matching tags up to date (109 listed)" in done.stdout
    # 109 tags: three pages (Link headers followed), each asked for once.
    assert upstream_proxy.count("GET", "/tags/list") == 3
    assert manifest_gets(upstream_proxy) == set(wanted.values())
    heads = {e.path.rsplit("/", 1)[1] for e in upstream_proxy.requests("HEAD", "/manifests/")}
    assert heads == set(wanted)
    assert {e.path.rsplit("/", 1)[1] for e in upstream_proxy.blob_gets()} == set(image.blob_digests)
    assert set(mirror.stored_files()) == set(wanted.values()) | set(image.blob_digests)

    # Up to date: the next run asks with HEADs only.
    upstream_proxy.reset()
    again = pullthrough_sync(mirror)
    assert again.returncode == 0, again.stderr
    assert manifest_gets(upstream_proxy) == set()
    assert upstream_proxy.blob_gets() == []


def test_dry_run_fetches_nothing(
    image_factory, upstream: Registry, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image: PushedImage = image_factory("library/dry", tag="base")
    wanted = put_tags(upstream, image, ["3.20", "3.21", "3.22"], distinct=True)
    put_tags(upstream, image, ["2.0", "latest"], distinct=True)
    mirror = mirror_factory(
        upstream_proxy.url, config=sync_config("library/dry", ">=3.20 <4"), start=False
    )
    upstream_proxy.reset()

    done = pullthrough_sync(mirror, "--dry-run")

    assert done.returncode == 0, done.stderr
    for tag in wanted:
        assert f"would fetch docker.io/library/dry:{tag}" in done.stdout
    assert "2.0" not in done.stdout and "latest" not in done.stdout
    assert "3 of 6 tags match, 3 to fetch, 0 stored" in done.stdout
    assert upstream_proxy.requests("GET", "/manifests/") == []
    assert upstream_proxy.blob_gets() == []
    assert mirror.stored_files() == {}


def test_sync_of_30_tags_stops_at_the_quota_reserve(
    image_factory, upstream: Registry, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image: PushedImage = image_factory("library/quota", tag="base")
    tags = put_tags(upstream, image, [f"1.{i}" for i in range(30)], distinct=True)
    mirror = mirror_factory(
        upstream_proxy.url,
        config=sync_config("library/quota", ">=1.0 <2", sync_quota_reserve=10),
        start=False,
    )
    upstream_proxy.reset()
    upstream_proxy.ratelimit_remaining = 20  # Docker Hub's header: 20 pulls left

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    assert "stopped: quota reserve reached" in done.stdout
    assert upstream_proxy.ratelimit_remaining == 10
    fetched = manifest_gets(upstream_proxy)
    assert len(fetched) == 10 and fetched <= set(tags.values())
    assert upstream_proxy.count(status=429) == 0
    stored = set(mirror.stored_files())
    assert stored & set(tags.values()) == fetched


def test_sync_waits_out_a_429(
    image_factory, upstream: Registry, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image: PushedImage = image_factory("library/throttled", tag="base")
    wanted = put_tags(upstream, image, ["3.20", "3.21"], distinct=True)
    mirror = mirror_factory(
        upstream_proxy.url,
        config=sync_config("library/throttled", r"^3\.2", sync_jobs=1),
        start=False,
    )
    upstream_proxy.reset()
    upstream_proxy.fail_status = 429
    upstream_proxy.fail_headers = {"Retry-After": "2"}
    upstream_proxy.fail_count = 1
    upstream_proxy.fault_path_contains = "/manifests/"

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    assert "2 of 2 matching tags up to date" in done.stdout
    (throttled,) = upstream_proxy.requests(status=429)
    later = [e for e in upstream_proxy.requests() if e.started > throttled.started]
    assert later, "the sync went on after the 429"
    # Nothing was asked during the 2 s Retry-After.
    assert min(e.started for e in later) - throttled.started >= 1.9
    assert manifest_gets(upstream_proxy) == set(wanted.values())


def test_server_syncs_on_its_schedule_with_metrics(
    image_factory, upstream: Registry, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image: PushedImage = image_factory("library/scheduled", tag="base")
    wanted = put_tags(upstream, image, ["3.20", "3.21"], distinct=True)
    from tests.support.net import free_port

    debug = free_port()
    config = sync_config("library/scheduled", r"^3\.2")
    config["mirror"]["sync"][0]["interval"] = "2s"
    config["http"] = {"debug": {"addr": f"127.0.0.1:{debug}", "prometheus": {"enabled": True}}}
    mirror = mirror_factory(upstream_proxy.url, config=config)

    deadline = time.monotonic() + 20
    while set(wanted.values()) - set(mirror.stored_files(settle=0.5)):
        assert time.monotonic() < deadline, mirror.log_tail(40)
        time.sleep(0.2)
    # A second run follows the interval: it asks again (HEADs) and fetches nothing new.
    upstream_proxy.wait_for("HEAD", "/manifests/3.20", at_least=2, timeout=20)
    assert len(upstream_proxy.requests("GET", "/manifests/")) == 2
    # A run's figures are counted when it ends (it logs its summary then); the HEADs above
    # can all belong to the first run's fetches, still going on a loaded machine.
    wait_until(
        lambda: "sync mirror.sync[0] docker.io/library/scheduled" in mirror.log_text(),
        timeout=20,
        message="a sync run's summary",
    )
    metrics = http_request("GET", f"http://127.0.0.1:{debug}/metrics").body.decode()
    assert 'pullthrough_sync_tags_total{entry="docker.io/library/scheduled"}' in metrics
    assert (
        'pullthrough_sync_last_run_timestamp_seconds{entry="docker.io/library/scheduled"}'
        in metrics
    )
    assert "sync mirror.sync[0] docker.io/library/scheduled" in mirror.log_text()


def test_tags_the_policy_denies_are_not_synced(
    image_factory, upstream: Registry, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image: PushedImage = image_factory("library/ruled", tag="base")
    tags = put_tags(upstream, image, ["3.20", "3.21"], distinct=True)
    config = sync_config(
        "library/ruled",
        r"^3\.2",
        policy=[
            {
                "upstream": "docker.io",
                "repositories": ["library/ruled"],
                "tags": ["3.21"],
                "action": "deny",
            }
        ],
    )
    mirror = mirror_factory(upstream_proxy.url, config=config, start=False)
    upstream_proxy.reset()

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    assert "denied docker.io/library/ruled:3.21 (mirror.policy)" in done.stdout
    assert [e for e in upstream_proxy.requests() if "3.21" in e.path] == []
    assert manifest_gets(upstream_proxy) == {tags["3.20"]}
    assert tags["3.21"] not in mirror.stored_files()


def test_a_denied_repository_is_not_even_listed(
    upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    config = sync_config(
        "library/secret",
        ".*",
        policy=[{"upstream": "docker.io", "repositories": ["library/secret"], "action": "deny"}],
    )
    mirror = mirror_factory(upstream_proxy.url, config=config, start=False)
    upstream_proxy.reset()

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    assert "stopped: mirror.policy" in done.stdout
    assert upstream_proxy.requests() == []


def test_an_offline_upstream_is_not_synced(
    image_factory, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    image_factory("library/away", tag="3.20")
    config = sync_config("library/away", r"^3\.2")
    config["proxy"] = {"offline": True}
    mirror = mirror_factory(upstream_proxy.url, config=config, start=False)
    upstream_proxy.reset()

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    assert "stopped: upstream docker.io is offline" in done.stdout
    assert upstream_proxy.requests() == []
    assert mirror.stored_files() == {}


def test_check_prints_the_sync_entries_as_understood(
    upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    mirror = mirror_factory(
        upstream_proxy.url, config=sync_config("alpine", ">=3.19 <4"), start=False
    )
    done = subprocess.run(
        [sys.executable, "-m", "pullthrough", "check", str(mirror.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(None),
    )
    assert done.returncode == 0, done.stderr
    assert (
        "mirror.sync[0]: syncs docker.io/library/alpine tags semver '>=3.19 <4' every 3600s"
        in done.stdout
    )


def test_only_the_chosen_platforms_of_an_index_are_fetched(
    image_factory, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    index: PushedImage = image_factory("library/multisync", tag="3.20", index=True)
    config = sync_config("library/multisync", r"^3\.2")
    config["mirror"]["sync"][0]["platforms"] = ["linux/arm64"]
    mirror = mirror_factory(upstream_proxy.url, config=config, start=False)
    upstream_proxy.reset()

    done = pullthrough_sync(mirror)

    assert done.returncode == 0, done.stderr
    arm64 = index.source.image_for("arm64")
    amd64 = index.source.image_for("amd64")
    stored = set(mirror.stored_files())
    assert arm64.blob_digests <= stored
    assert not (amd64.blob_digests - arm64.blob_digests) & stored
    gets = manifest_gets(upstream_proxy)
    assert index.digest in gets and len(gets) == 2  # the index and the arm64 image


def test_a_tag_list_that_fails_fails_the_run(
    upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    mirror = mirror_factory(
        upstream_proxy.url, config=sync_config("library/anything", ".*"), start=False
    )
    upstream_proxy.fail_status = 503
    upstream_proxy.fault_path_contains = "/tags/list"

    done = pullthrough_sync(mirror)

    assert done.returncode == 1
    assert "stopped: listing the tags failed" in done.stdout
    assert upstream_proxy.count("GET", "/tags/list") == 1
