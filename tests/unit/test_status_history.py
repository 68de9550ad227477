"""The status page's history: increments add up per bucket, each ring stays bounded, and
what was written is there after the file is reopened (a restart)."""

from __future__ import annotations

from pathlib import Path

from pullthrough.store.history import RESOLUTIONS, History, Sample

T0 = 1_800_000_000.0  # a whole hour, day and 2-hour boundary apart from nothing special


async def test_samples_add_up_in_their_buckets_and_survive_a_reopen(tmp_path: Path) -> None:
    history = History(tmp_path / "index.db")
    await history.open()
    await history.add(Sample(T0 + 1, requests=3, hits=2, misses=1, served=100, fetched=40,
                             store_bytes=1000))
    await history.add(Sample(T0 + 30, requests=2, hits=2, served=50, store_bytes=1200))
    await history.add(Sample(T0 + 61, requests=1, misses=1, fetched=7))
    await history.close()

    reopened = History(tmp_path / "index.db")
    await reopened.open()
    seconds, points = await reopened.points("hour", T0 + 120)
    assert seconds == 60
    assert [(p.requests, p.hits, p.misses, p.served, p.fetched, p.store_bytes) for p in points] == [
        (5, 4, 1, 150, 40, 1200), (1, 0, 1, 0, 7, None)
    ]
    _, day = await reopened.points("day", T0 + 120)
    assert [(p.requests, p.served, p.store_bytes) for p in day] == [(6, 150, 1200)]
    await reopened.close()


async def test_each_ring_keeps_only_its_window(tmp_path: Path) -> None:
    history = History(tmp_path / "index.db")
    await history.open()
    # Two weeks of samples every 17 minutes: 1,186 hourly-and-finer rows unbounded.
    for minute in range(0, 14 * 24 * 60, 17):
        await history.add(Sample(T0 + minute * 60, requests=1))
    bound = sum(kept for _, kept in RESOLUTIONS.values())
    assert await history.size() <= bound + len(RESOLUTIONS)
    now = T0 + 14 * 24 * 3600
    _, hour = await history.points("hour", now)
    assert len(hour) <= 60 and all(p.start > now - 3600 - 60 for p in hour)
    _, week = await history.points("week", now)
    assert 80 <= len(week) <= 84 and all(p.start > now - 7 * 24 * 3600 - 7200 for p in week)
    await history.close()
