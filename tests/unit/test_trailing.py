"""``Trailing``: the hosted index's copy in the bucket is written for every change before
that change is acknowledged, and a burst of changes shares runs."""

from __future__ import annotations

import asyncio

import pytest

from pullthrough.singleflight import Trailing


async def test_every_caller_returns_after_a_run_that_began_after_its_call() -> None:
    state = {"changes": 0}
    seen: list[int] = []
    gate = asyncio.Event()

    async def save() -> None:
        snapshot = state["changes"]
        await gate.wait()
        seen.append(snapshot)

    trailing = Trailing(save)

    async def change_then_save() -> int:
        state["changes"] += 1
        mine = state["changes"]
        await trailing()
        return mine

    first = asyncio.ensure_future(change_then_save())
    await asyncio.sleep(0)  # the first run starts and waits on the gate
    rest = [asyncio.ensure_future(change_then_save()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    done = await asyncio.gather(first, *rest)
    # Two runs for six changes; the last run saw all of them, so no caller returned
    # before a snapshot holding its change existed.
    assert seen == [1, 6]
    assert all(mine <= max(seen) for mine in done)


async def test_a_failed_run_fails_its_callers_and_the_next_call_runs_again() -> None:
    calls = {"n": 0}

    async def save() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("bucket down")

    trailing = Trailing(save)
    with pytest.raises(OSError):
        await trailing()
    await trailing()
    assert calls["n"] == 2
