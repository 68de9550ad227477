"""The background scrub: re-hashes the store at no more than mirror.scrub_rate, quarantines
what rotted, and records what passed so reads may trust it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pullthrough.config import load
from pullthrough.metrics import Metrics
from pullthrough.mirror.scrub import Pace, Scrubber
from pullthrough.reference import Digest, parse_digest
from pullthrough.store.blobs import BlobStore

MiB = 1024 * 1024


class FakeTime:
    """A clock that moves only when the code under test sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _digest(data: bytes) -> Digest:
    return parse_digest("sha256:" + hashlib.sha256(data).hexdigest())


async def test_pace_keeps_a_job_at_its_rate_and_idle_time_earns_no_burst() -> None:
    t = FakeTime()
    pace = Pace(4 * MiB, clock=t.clock, sleep=t.sleep)
    for _ in range(10):
        await pace.spent(MiB)
    assert sum(t.sleeps) == pytest.approx(2.5)  # 10 MiB at 4 MiB/s
    assert max(t.sleeps) == pytest.approx(0.25)  # one chunk's worth, never a long stall

    t.now += 60.0  # an idle minute ...
    t.sleeps.clear()
    for _ in range(4):
        await pace.spent(MiB)
    assert sum(t.sleeps) == pytest.approx(1.0)  # ... buys no catching up above the rate


async def test_scrub_hashes_at_the_rate_quarantines_rot_and_trusts_the_rest(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path)
    store.prepare()
    blobs = [bytes([n]) * (3 * MiB + n) for n in range(3)]
    digests = [_digest(b) for b in blobs]
    for digest, data in zip(digests, blobs, strict=True):
        await store.put(digest, data)
    rotten = digests[1]
    with store.path_for(rotten).open("r+b") as f:
        f.seek(MiB)
        f.write(b"\xff")
    store.verified.forget(digests[0])  # as after a restart: nothing known about it

    t = FakeTime()
    metrics = Metrics()
    quarantined: list[Digest] = []

    async def quarantine(digest: Digest) -> None:
        quarantined.append(digest)
        await store.remove(digest)

    scrubber = Scrubber(
        store=store,
        rate=2 * MiB,
        interval=3600.0,
        quarantine=quarantine,
        metrics=metrics,
        pace=Pace(2 * MiB, clock=t.clock, sleep=t.sleep),
    )
    report = await scrubber.scrub_once()

    total = sum(len(b) for b in blobs)
    assert report.files == 3 and report.corrupt == 1 and report.hashed_bytes == total
    assert sum(t.sleeps) == pytest.approx(total / (2 * MiB))  # no faster than the rate
    assert quarantined == [rotten] and not store.path_for(rotten).exists()
    assert (
        metrics.registry.get_sample_value("pullthrough_corrupt_blobs_total", {"found": "scrub"})
        == 1
    )
    assert metrics.registry.get_sample_value("pullthrough_scrubbed_bytes_total") == total
    for digest in (digests[0], digests[2]):  # passed: reads may now send them unhashed
        opened = await store.open(digest)
        assert opened is not None
        assert store.verified.matches(digest, opened.identity)
        opened.close()


def test_scrub_rate_is_read_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nmirror: {scrub_rate: 50MB/s}\n")
    assert load(path, environ={}).scrub_rate == 50_000_000
    path.write_text("version: 0.1\nmirror: {scrub_rate: 0}\n")
    assert load(path, environ={}).scrub_rate == 0  # off
