"""The upstream circuit breaker: when the mirror stops asking an upstream, and how it
finds out at once that it is back."""

from __future__ import annotations

from pullthrough.upstream.breaker import FAILURES, WINDOW, Breaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _open(breaker: Breaker) -> None:
    for _ in range(FAILURES):
        ticket = breaker.admit()
        assert ticket is not None
        breaker.failed(ticket)
        breaker.release(ticket)
    assert breaker.state is State.OPEN


def test_one_refused_connection_does_not_open_the_circuit() -> None:
    breaker = Breaker(clock=Clock())
    ticket = breaker.admit()
    assert ticket is not None
    breaker.failed(ticket)
    breaker.release(ticket)
    assert breaker.state is State.CLOSED
    assert breaker.admit() is not None


def test_failures_in_the_window_open_it() -> None:
    clock = Clock()
    breaker = Breaker(clock=clock)
    for _ in range(FAILURES - 1):
        ticket = breaker.admit()
        assert ticket is not None
        breaker.failed(ticket)
    assert breaker.state is State.CLOSED
    ticket = breaker.admit()
    assert ticket is not None
    breaker.failed(ticket)
    assert breaker.state is State.OPEN


def test_failures_spread_wider_than_the_window_do_not_open_it() -> None:
    clock = Clock()
    breaker = Breaker(clock=clock)
    for _ in range(FAILURES * 2):
        ticket = breaker.admit()
        assert ticket is not None
        breaker.failed(ticket)
        clock.now += WINDOW / (FAILURES - 1) + 0.1
    assert breaker.state is State.CLOSED


def test_an_answer_forgets_earlier_failures() -> None:
    breaker = Breaker(clock=Clock())
    for _ in range(FAILURES - 1):
        ticket = breaker.admit()
        assert ticket is not None
        breaker.failed(ticket)
    breaker.succeeded()
    ticket = breaker.admit()
    assert ticket is not None
    breaker.failed(ticket)
    assert breaker.state is State.CLOSED


def test_open_lets_one_probe_through_at_once_and_fails_the_rest() -> None:
    clock = Clock()
    breaker = Breaker(clock=clock)
    _open(breaker)
    probe = breaker.admit()  # no waiting: the first request after opening probes
    assert probe is not None and probe.probe
    assert breaker.state is State.HALF_OPEN
    assert breaker.admit() is None
    assert breaker.admit() is None


def test_probe_success_closes_the_circuit_for_everyone() -> None:
    breaker = Breaker(clock=Clock())
    _open(breaker)
    probe = breaker.admit()
    assert probe is not None
    breaker.succeeded()
    breaker.release(probe)
    assert breaker.state is State.CLOSED
    assert all(breaker.admit() is not None for _ in range(5))


def test_probe_failure_opens_it_again_and_the_next_request_probes() -> None:
    breaker = Breaker(clock=Clock())
    _open(breaker)
    probe = breaker.admit()
    assert probe is not None
    breaker.failed(probe)
    breaker.release(probe)
    assert breaker.state is State.OPEN
    again = breaker.admit()
    assert again is not None and again.probe


def test_a_probe_that_ends_without_a_verdict_hands_the_turn_on() -> None:
    breaker = Breaker(clock=Clock())
    _open(breaker)
    probe = breaker.admit()
    assert probe is not None
    breaker.release(probe)  # e.g. its client went away
    assert breaker.state is State.OPEN
    assert breaker.admit() is not None


def test_late_failure_of_a_request_admitted_while_closed_does_not_reopen_after_recovery() -> None:
    breaker = Breaker(clock=Clock())
    early = breaker.admit()
    assert early is not None
    _open(breaker)
    probe = breaker.admit()
    assert probe is not None
    breaker.succeeded()
    breaker.failed(early)  # one stale failure in a closed circuit: counted, not opening
    assert breaker.state is State.CLOSED


def test_state_changes_are_reported() -> None:
    seen: list[State] = []
    breaker = Breaker(clock=Clock(), on_change=seen.append)
    _open(breaker)
    probe = breaker.admit()
    assert probe is not None
    breaker.succeeded()
    assert seen == [State.OPEN, State.HALF_OPEN, State.CLOSED]
