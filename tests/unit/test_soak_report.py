"""scripts/soak_report.py: the soak's verdict fails a run for each thing it promises to catch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak_report.py"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_report"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def sample(report: ModuleType, at: float, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "at": at,
        "statuses": {"200": 900, "404": 20, "503": 30, "err": 2},
        "wrong": 0,
        "wrong_bytes": 0,
        "aborted": 3,
        "rss": 80 * MiB,
        "rss_peak": 90 * MiB,
        "fds": 40,
        "upstream_conns": 2,
        "upstream_conns_peak": 6,
        "store_bytes": 5 * MiB,
        "store_peak": 7 * MiB,
        "maxsize": 6 * MiB,
    }
    values.update(changes)
    return report.Sample(**values)


def run(report: ModuleType, *last: Any, minutes: int = 10) -> list[Any]:
    samples = [sample(report, 60.0 * m) for m in range(1, minutes)]
    return samples + list(last or [sample(report, 60.0 * minutes)])


def test_a_quiet_run_passes(report: ModuleType) -> None:
    result = report.verdict(run(report))
    assert result.ok and result.reasons == ()
    assert result.baseline_at == 120.0  # growth is measured from minute 2


def test_wrong_bytes_fail(report: ModuleType) -> None:
    result = report.verdict(run(report, sample(report, 600.0, wrong=1, wrong_bytes=4096)))
    assert not result.ok and "4096 wrong bytes" in result.reasons[0]


def test_a_500_fails_whoever_saw_it(report: ModuleType) -> None:
    seen = report.verdict(run(report, sample(report, 600.0, statuses={"200": 5, "500": 1})))
    assert not seen.ok and "status 500" in seen.reasons[0]
    assert not report.verdict(run(report), wrong_heads=1).ok
    counted = report.verdict(run(report), server_500=2)
    assert not counted.ok and "mirror counted 2" in counted.reasons[0]


def test_growth_past_the_bounds_fails_within_them_passes(report: ModuleType) -> None:
    grown = report.verdict(run(report, sample(report, 600.0, rss=150 * MiB, fds=110)))
    assert not grown.ok and len(grown.reasons) == 2
    assert "RSS grew 70.0 MiB" in grown.reasons[0] and "fds grew by 70" in grown.reasons[1]
    within = report.verdict(run(report, sample(report, 600.0, rss=140 * MiB, fds=100)))
    assert within.ok


def test_growth_before_minute_two_is_warm_up(report: ModuleType) -> None:
    samples = run(report)
    samples[0] = sample(report, 60.0, rss=10 * MiB, fds=5)  # minute 1: still warming up
    assert report.verdict(samples).ok


def test_a_short_run_compares_its_first_and_last_samples(report: ModuleType) -> None:
    short = [sample(report, 15.0), sample(report, 30.0), sample(report, 60.0, rss=200 * MiB)]
    result = report.verdict(short)
    assert result.baseline_at == 15.0 and not result.ok
    assert report.verdict(short[:1]).baseline_at is None


def test_the_table_shows_every_reading(report: ModuleType) -> None:
    row = report.row(sample(report, 120.0, wrong_bytes=7, phases=("refuse", "503")))
    assert row.split()[:9] == ["2.0m", "952", "900", "20", "30", "0", "2", "3", "7"]
    assert "80.0" in row and "2(6)" in row and "5.0(7.0)/6" in row and "refuse,503" in row
    assert len(report.header().split("  ")[0]) == len(row.split("  ")[0])
