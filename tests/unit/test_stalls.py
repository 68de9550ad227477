"""The stall window and budget: their config keys, and how a watched wait ends."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pullthrough.config import ConfigError, load
from pullthrough.metrics import Metrics
from pullthrough.mirror.stalls import Stalled, StallWatch


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_default_stall_window_is_about_ten_seconds_within_a_30_second_bound() -> None:
    upstream = load(None, environ={}).upstream
    assert upstream.stall_timeout == 10
    # Stalls of one download may cost its clients at most this much silence in all.
    assert upstream.stall_timeout <= upstream.stall_budget < 30
    assert upstream.stall_timeout < upstream.read_timeout


def test_stall_keys_are_read_inherited_and_overridden(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            "mirror:\n"
            "  upstream_stall_timeout: 2s\n"
            "  upstream_stall_budget: 5s\n"
            "  upstreams:\n"
            "    - {name: ghcr.io, remoteurl: https://ghcr.io}\n"
            "    - {name: quay.io, remoteurl: https://quay.io, upstream_stall_timeout: 500ms}\n"
            "http: {addr: '127.0.0.1:5000'}\n",
        ),
        environ={"REGISTRY_MIRROR_UPSTREAM_STALL_BUDGET": "6s"},
    )
    hub, ghcr, quay = config.upstreams
    assert (hub.stall_timeout, hub.stall_budget) == (2, 6)
    assert (ghcr.stall_timeout, ghcr.stall_budget) == (2, 6)
    assert (quay.stall_timeout, quay.stall_budget) == (0.5, 6)
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mirror: {upstream_stall_timeout: 0s}", "mirror.upstream_stall_timeout"),
        ("mirror: {upstream_stall_timeout: soon}", "mirror.upstream_stall_timeout"),
        ("mirror: {upstream_stall_budget: -1s}", "mirror.upstream_stall_budget"),
        (
            "mirror: {upstream_stall_timeout: 20s, upstream_stall_budget: 10s}",
            "mirror.upstream_stall_budget",
        ),
        (
            "mirror: {upstreams: [{name: a.io, remoteurl: 'https://a.io',"
            " upstream_stall_timeout: 1 minute}]}",
            "mirror.upstreams[0].upstream_stall_timeout",
        ),
        (
            "mirror: {upstreams: [{name: a.io, remoteurl: 'https://a.io',"
            " upstream_stall_timeout: 30s}]}",
            "mirror.upstreams[0].upstream_stall_budget",
        ),
    ],
)
def test_bad_stall_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    assert str(info.value).startswith(key), str(info.value)


def _watch(window: float, budget: float) -> tuple[StallWatch, Metrics]:
    metrics = Metrics()
    counter = metrics.upstream_stalls.labels("up")
    return StallWatch(window=window, budget=budget, counter=counter), metrics


def test_each_wait_is_bounded_by_the_window_then_by_what_is_left_of_the_budget() -> None:
    watch, metrics = _watch(0.1, 0.25)
    assert watch.allowance() == 0.1
    for _ in range(2):
        assert isinstance(watch.stalled(watch.allowance()), Stalled)
    assert (watch.stalls, watch.exhausted) == (2, False)
    # What is left of the budget (0.05 s) bounds the third wait, then nothing is left.
    assert abs(watch.allowance() - 0.05) < 1e-9
    watch.stalled(watch.allowance())
    assert (watch.stalls, watch.exhausted, watch.allowance()) == (3, True, 0.0)
    assert metrics.upstream_stalls.labels("up")._value.get() == 3


def test_silence_past_the_window_stalls_a_wait_for_the_upstream() -> None:
    watch, _ = _watch(0.1, 5.0)

    async def silent() -> float:
        began = time.monotonic()
        with pytest.raises(Stalled):
            async with watch.waiting():
                await asyncio.sleep(5.0)
        return time.monotonic() - began

    assert asyncio.run(silent()) < 1.0
    assert watch.stalls == 1


def test_a_timeout_that_is_not_the_watch_s_own_stays_what_it_was() -> None:
    watch, _ = _watch(5.0, 5.0)

    async def run() -> None:
        async with watch.waiting():
            raise TimeoutError("the read time-out")

    with pytest.raises(TimeoutError) as info:
        asyncio.run(run())
    assert not isinstance(info.value, Stalled)
    assert watch.stalls == 0
