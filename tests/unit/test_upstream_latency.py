"""The upstream latency ring: nearest-rank median and p90 over the most recent answers."""

from __future__ import annotations

from pullthrough.upstream.latency import Latency, LatencySummary


def test_no_answer_yet_has_no_latency() -> None:
    assert Latency().summary() is None


def test_median_and_p90_are_measured_times() -> None:
    ring = Latency()
    for s in (0.5, 0.1, 0.3, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0):
        ring.note(s)
    assert ring.summary() == LatencySummary(samples=10, median=0.5, p90=0.9)


def test_only_the_most_recent_answers_count() -> None:
    ring = Latency(size=3)
    for s in (9.0, 9.0, 9.0, 0.1, 0.1, 0.1):
        ring.note(s)
    assert ring.summary() == LatencySummary(samples=3, median=0.1, p90=0.1)
