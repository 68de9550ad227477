"""Ad-hoc upstream slots: bounded, given back once idle, never made before authorization."""

from __future__ import annotations

import dataclasses

from pullthrough.config import Config, load
from pullthrough.metrics import Metrics
from pullthrough.mirror.upstreams import Upstreams


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(**changes: object) -> Config:
    base = load(None, environ={})
    settings: dict[str, object] = {"allow_any_upstream": True, "adhoc_max": 2, "adhoc_idle": 60.0}
    return dataclasses.replace(base, **{**settings, **changes})  # type: ignore[arg-type]


def _take(upstreams: Upstreams, ns: str) -> bool:
    return upstreams.for_namespace(ns) is not None


def test_config_for_says_what_a_name_means_without_making_a_slot() -> None:
    upstreams = Upstreams(_config(), Metrics())
    found = upstreams.config_for("Registry.Example.com")
    assert found is not None and found.name == "registry.example.com"
    assert found.url == "https://registry.example.com" and found.username is None
    assert upstreams.adhoc_count == 0
    assert upstreams.config_for("docker.io") is upstreams.default.config
    assert upstreams.config_for("127.0.0.1") is None  # the outbound policy refuses it
    assert upstreams.config_for("not a host") is None


def test_no_adhoc_upstream_without_allow_any_upstream() -> None:
    upstreams = Upstreams(_config(allow_any_upstream=False), Metrics())
    assert upstreams.config_for("registry.example.com") is None
    assert not _take(upstreams, "registry.example.com")


def test_slots_are_capped_and_idle_ones_given_back_for_a_new_name() -> None:
    clock = Clock()
    upstreams = Upstreams(_config(), Metrics(), clock=clock)
    assert _take(upstreams, "a.example") and _take(upstreams, "b.example")
    assert not _take(upstreams, "c.example")  # both slots held
    assert "slots are in use" in upstreams.how_to_add("c.example")

    clock.now += 30
    assert _take(upstreams, "a.example")  # used again: idle counts from now
    clock.now += 31  # b unused for 61 s, a for 31 s
    assert _take(upstreams, "c.example")
    assert {u.name for u in upstreams} == {"docker.io", "a.example", "c.example"}


def test_a_slot_with_a_request_under_way_is_not_given_back() -> None:
    clock = Clock()
    upstreams = Upstreams(_config(adhoc_max=1), Metrics(), clock=clock)
    client = upstreams.for_namespace("slow.example")
    assert client is not None
    client.in_use = 1  # a long download
    clock.now += 3600
    assert upstreams.reclaim_idle() == 0
    assert not _take(upstreams, "other.example")
    client.in_use, client.last_active = 0, clock.now  # the download ends
    clock.now += 59
    assert upstreams.reclaim_idle() == 0  # idle counts from when it ended
    clock.now += 1
    assert upstreams.reclaim_idle() == 1
    assert _take(upstreams, "other.example")


async def test_reclaim_closes_the_given_back_clients_connections() -> None:
    clock = Clock()
    upstreams = Upstreams(_config(), Metrics(), clock=clock)
    client = upstreams.for_namespace("a.example")
    assert client is not None
    session = client.session  # opened, as a request would
    clock.now += 61
    assert await upstreams.reclaim() == 1
    assert session.closed
    assert upstreams.adhoc_count == 0
    await upstreams.close()


def test_a_given_back_upstreams_metrics_series_are_removed() -> None:
    clock = Clock()
    metrics = Metrics()
    upstreams = Upstreams(_config(), metrics, clock=clock)
    client = upstreams.for_namespace("junk.example")
    assert client is not None
    metrics.upstream_errors.labels("junk.example", "UNAVAILABLE").inc()
    metrics.cache.labels("manifest", "miss", "junk.example").inc()
    metrics.upstream_errors.labels("docker.io", "UNAVAILABLE").inc()
    clock.now += 61
    upstreams.reclaim_idle()
    text = metrics.render().decode()
    assert "junk.example" not in text
    assert 'upstream="docker.io"' in text


def test_many_made_up_names_never_hold_more_than_the_cap() -> None:
    upstreams = Upstreams(_config(adhoc_max=64), Metrics(), clock=Clock())
    taken = sum(_take(upstreams, f"junk{i}.example") for i in range(1000))
    assert taken == 64 and upstreams.adhoc_count == 64
