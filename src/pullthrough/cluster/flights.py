"""Cluster-wide single flight: one replica does the work, the others wait for its result.

Used for tag revalidation (one upstream HEAD per tag however many replicas ask) and for
manifest fetches. The replica that gets the lock (``flight|K|lock``, renewed while the
work runs, so a dead leader frees it within seconds) does the work and publishes its
outcome (``flight|K``): a value, or the registry error the upstream gave. A replica that
finds the lock taken waits for an outcome published after it arrived, so it joins work
in progress but never takes an old answer for a new question; with ``reuse_for`` > 0 a
successful outcome younger than that is answered at once (``flight|K|fresh`` expires
then), which makes it one HEAD per tag per freshness window across the cluster.

Without Redis, or when a leader vanished without an outcome too long, the caller does
the work itself: coalescing is an optimisation, never a reason to fail.

An outcome read from Redis is untrusted: one that is not what a leader publishes (not
JSON, no id, too long), or whose value ``decode`` cannot use, is ignored with a warning
and the caller does the work itself (or joins whoever does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from pullthrough.cluster.connection import Coordination, RedisUnavailable, key
from pullthrough.cluster.errors import error_from_json, error_to_json
from pullthrough.errors import RegistryError

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_TTL = 10.0
# Waiters look for the outcome this often.
POLL = 0.02
# An outcome stays this long for waiters to read it (reuse is decided by ``fresh``).
KEEP = 30.0
# A waiter gives up waiting (and does the work) after this long.
WAIT_LIMIT = 120.0
# No outcome a leader publishes is longer (a HEAD's or a manifest's digest and type).
MAX_OUTCOME = 64 * 1024
_OUTCOME_ID = re.compile(r"[0-9a-f]{32}")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Flights:
    def __init__(self, coordination: Coordination) -> None:
        self._c = coordination
        self._release = coordination.client.register_script(_RELEASE)
        self._extend = coordination.client.register_script(_EXTEND)

    async def do(
        self,
        name: str,
        work: Callable[[], Awaitable[T]],
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], Awaitable[T | None]],
        reuse_for: float = 0.0,
    ) -> T:
        """``work()``, done once across the cluster for concurrent callers of ``name``.
        ``encode`` makes the result JSON for the others, whose ``decode`` may answer
        None (e.g. the stored manifest is gone again): then they do the work themselves.
        A None result is shared with waiters but never reused."""
        outcome_key, lock_key, fresh_key = (
            key("flight", name),
            key("flight", name, "lock"),
            key("flight", name, "fresh"),
        )
        try:
            seen, fresh = await self._c.call(lambda r: r.mget([outcome_key, fresh_key]))
        except RedisUnavailable:
            return await work()
        seen_id = None
        outcome = _outcome(name, seen)
        if outcome is not None:
            seen_id = outcome["id"]
            if reuse_for > 0 and fresh == seen_id and outcome["ok"]:
                value = await _decoded(name, decode, outcome.get("value"))
                if value is not None:
                    return value
        deadline = time.monotonic() + WAIT_LIMIT
        while time.monotonic() < deadline:
            token = uuid.uuid4().hex
            try:
                leading = await self._c.call(partial(_take_lock, lock_key=lock_key, token=token))
            except RedisUnavailable:
                return await work()
            if leading:
                # A flight may have ended between the look above and the lock: its
                # outcome came after this caller arrived, so it answers this caller too
                # (as it would a waiter) rather than the work running again.
                late = await self._published_since(name, outcome_key, seen_id, decode)
                if late is not None:
                    await self._unlock(lock_key, token)
                    return late
                return await self._lead(
                    work, encode, token, lock_key, outcome_key, fresh_key, reuse_for
                )
            outcome = await self._wait(name, lock_key, outcome_key, seen_id, deadline)
            if outcome is None:
                continue  # the leader went without an answer: try to lead
            if not outcome["ok"]:
                raise error_from_json(outcome.get("error"))
            if outcome.get("value") is None:
                return None  # type: ignore[return-value]  # encode(None) is None only for T | None
            value = await _decoded(name, decode, outcome["value"])
            if value is not None:
                return value
            seen_id = outcome["id"]  # unusable here: do it again (or join whoever does)
        return await work()

    async def _published_since(
        self,
        name: str,
        outcome_key: str,
        seen_id: str | None,
        decode: Callable[[Any], Awaitable[T | None]],
    ) -> T | None:
        """A successful outcome other than ``seen_id``, decoded; None if there is none (or
        it is an error, or unusable here: then the caller leads)."""
        try:
            raw = await self._c.call(lambda r: r.get(outcome_key))
        except RedisUnavailable:
            return None
        outcome = _outcome(name, raw)
        if outcome is None or outcome["id"] == seen_id or not outcome["ok"]:
            return None
        if outcome.get("value") is None:
            return None
        return await _decoded(name, decode, outcome["value"])

    async def _wait(
        self, name: str, lock_key: str, outcome_key: str, seen_id: str | None, deadline: float
    ) -> dict[str, Any] | None:
        """The next outcome (not ``seen_id``), or None once the lock is free without one."""
        ignored: Any = None  # a malformed outcome is warned about once, not at every poll
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            try:
                raw, locked = await self._c.call(
                    lambda r: _get_and_exists(r, outcome_key, lock_key)
                )
            except RedisUnavailable:
                return None
            outcome = None if raw == ignored else _outcome(name, raw)
            if outcome is None:
                ignored = raw
            elif outcome["id"] != seen_id:
                return outcome
            if not locked:
                return None
        return None

    async def _lead(
        self,
        work: Callable[[], Awaitable[T]],
        encode: Callable[[T], Any],
        token: str,
        lock_key: str,
        outcome_key: str,
        fresh_key: str,
        reuse_for: float,
    ) -> T:
        keeper = asyncio.ensure_future(self._keep_lock(lock_key, token))
        outcome: dict[str, Any] = {"id": uuid.uuid4().hex}
        try:
            value = await work()
            encoded = encode(value)
            outcome.update(ok=True, value=encoded)
            return value
        except RegistryError as exc:
            outcome.update(ok=False, error=error_to_json(exc))
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if "ok" in outcome:
                await self._publish(outcome, outcome_key, fresh_key, reuse_for)
            await self._unlock(lock_key, token)

    async def _unlock(self, lock_key: str, token: str) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self._c.call(lambda r: self._release(keys=[lock_key], args=[token]))

    async def _publish(
        self, outcome: dict[str, Any], outcome_key: str, fresh_key: str, reuse_for: float
    ) -> None:
        reusable = reuse_for > 0 and outcome.get("ok") and outcome.get("value") is not None

        async def publish(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(outcome_key, json.dumps(outcome), px=int(max(KEEP, reuse_for) * 1000))
                if reusable:
                    pipe.set(fresh_key, outcome["id"], px=int(reuse_for * 1000))
                else:
                    pipe.delete(fresh_key)
                await pipe.execute()

        with contextlib.suppress(RedisUnavailable):
            await self._c.call(publish)

    async def _keep_lock(self, lock_key: str, token: str) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL / 3)
            with contextlib.suppress(RedisUnavailable):
                await self._c.call(
                    lambda r: self._extend(keys=[lock_key], args=[token, int(LOCK_TTL * 1000)])
                )


def _outcome(name: str, raw: Any) -> dict[str, Any] | None:
    """The outcome ``raw`` holds, checked as far as this module knows its shape; None
    when there is none or it is malformed (logged: no leader wrote it)."""
    if raw is None:
        return None
    try:
        if not isinstance(raw, str) or len(raw) > MAX_OUTCOME:
            raise ValueError("not a string of a sensible length")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        if not isinstance(doc.get("id"), str) or not _OUTCOME_ID.fullmatch(doc["id"]):
            raise ValueError("no outcome id")
        if not isinstance(doc.get("ok"), bool):
            raise ValueError("no ok")
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        log.warning("ignored a malformed outcome in redis for %r: %s", name[:300], exc)
        return None
    return doc


async def _decoded(name: str, decode: Callable[[Any], Awaitable[T | None]], value: Any) -> T | None:
    """``decode(value)``; None (logged) when the value is not one it can use."""
    try:
        return await decode(value)
    except RegistryError:
        raise
    except Exception as exc:  # a malformed value from redis: do the work instead
        log.warning("ignored a malformed outcome in redis for %r: %r", name[:300], exc)
        return None


async def _take_lock(r: Any, *, lock_key: str, token: str) -> bool:
    return bool(await r.set(lock_key, token, nx=True, px=int(LOCK_TTL * 1000)))


async def _get_and_exists(r: Any, outcome_key: str, lock_key: str) -> tuple[Any, Any]:
    async with r.pipeline(transaction=False) as pipe:
        pipe.get(outcome_key)
        pipe.exists(lock_key)
        raw, locked = await pipe.execute()
    return raw, locked
