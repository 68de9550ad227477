"""Cluster-wide single flight (``cluster.flights``) against a real Redis, at the moment a
replica arrives as another's flight ends."""

from __future__ import annotations

from typing import Any

import pytest

from pullthrough.cluster import flights as flights_module
from pullthrough.cluster.connection import Coordination
from pullthrough.cluster.flights import Flights
from pullthrough.config.model import ClusterConfig
from tests.cluster.redis_server import RedisServer

pytestmark = pytest.mark.cluster


def _coordination(server: RedisServer, name: str) -> Coordination:
    return Coordination(
        ClusterConfig(redis_host="127.0.0.1", redis_port=server.port, advertise=name)
    )


async def _identity(value: Any) -> Any:
    return value


async def test_a_flight_that_ends_between_a_look_and_the_lock_is_joined_not_repeated(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica looks (no outcome yet), then another's flight publishes and frees the
    lock before this one takes it: the published outcome is the answer (one upstream HEAD
    per tag across the cluster), not a second run of the work. Failed before the fix:
    the late replica led and ran the work again (2 HEADs in a 30-client cluster test)."""
    a, b = _coordination(redis_server, "http://a"), _coordination(redis_server, "http://b")
    first, late = Flights(a), Flights(b)
    runs: list[str] = []

    async def work(who: str) -> dict[str, str]:
        runs.append(who)
        return {"digest": "sha256:" + "a" * 64}

    real_take = flights_module._take_lock
    raced = False

    async def take_after_the_other_finished(r: Any, *, lock_key: str, token: str) -> bool:
        nonlocal raced
        if not raced:
            raced = True  # the other replica's whole flight, in the window
            await first.do(
                "head|t", lambda: work("first"), encode=dict, decode=_identity, reuse_for=60
            )
        return await real_take(r, lock_key=lock_key, token=token)

    monkeypatch.setattr(flights_module, "_take_lock", take_after_the_other_finished)
    try:
        got = await late.do(
            "head|t", lambda: work("late"), encode=dict, decode=_identity, reuse_for=60
        )
    finally:
        await a.close()
        await b.close()
    assert runs == ["first"]
    assert got == {"digest": "sha256:" + "a" * 64}


async def test_an_outcome_from_before_the_look_is_not_taken_for_a_new_question(
    redis_server: RedisServer,
) -> None:
    """Without reuse, an outcome published before a caller looked is old: it runs the
    work itself."""
    a = _coordination(redis_server, "http://a")
    flights = Flights(a)
    runs: list[int] = []

    async def work() -> dict[str, int]:
        runs.append(len(runs))
        return {"n": len(runs)}

    try:
        await flights.do("get|m", work, encode=dict, decode=_identity)
        second = await flights.do("get|m", work, encode=dict, decode=_identity)
    finally:
        await a.close()
    assert runs == [0, 1] and second == {"n": 2}
