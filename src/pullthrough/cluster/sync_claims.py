"""``mirror.sync`` in cluster mode: one replica runs each sync per interval.

A run is claimed with ``SET sync|<entry> <replica> NX PX <interval>``: the replica that
sets the key runs the entry, every other replica finds it set and does not. The key is
left to expire (not deleted at the end of the run): it is the record that this interval's
run happened, so a replica that asks a moment later does not run it again. A run that
lasts longer than its interval keeps the key alive while it works (``holding``), so no
second run starts beside it, and gives it up when it ends; a replica that dies mid-run
frees the entry within ``HOLD_TTL_MS``. When Redis does not answer, no replica claims
anything: a sync runs late rather than on every replica at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pullthrough.cluster.connection import Coordination, RedisUnavailable, key

log = logging.getLogger(__name__)

# While a run lasts past its claim, the claim is kept this long (ms), renewed every third.
HOLD_TTL_MS = 30_000

# Set the claim's time to live to ARGV[2] ms, if this replica still holds it.
_EXPIRE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Give the claim up, if this replica still holds it (its interval has passed).
_DROP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class SyncClaims:
    """Implements ``pullthrough.mirror.sync.Claims`` with keys in Redis."""

    def __init__(self, coordination: Coordination) -> None:
        self._c = coordination
        self._token = f"{coordination.node}#{uuid.uuid4().hex[:12]}"
        self._expire = coordination.client.register_script(_EXPIRE)
        self._drop = coordination.client.register_script(_DROP)
        self._until: dict[str, float] = {}  # name → when its claim lapses (monotonic)

    async def claim(self, name: str, seconds: float) -> bool:
        ms = max(1, int(seconds * 1000))
        try:
            taken = await self._c.call(
                lambda r: r.set(key("sync", name), self._token, nx=True, px=ms)
            )
        except RedisUnavailable:
            log.warning("sync %s: redis does not answer; not run on this replica now", name)
            return False
        if taken:
            self._until[name] = time.monotonic() + seconds
        return bool(taken)

    @contextlib.asynccontextmanager
    async def holding(self, name: str) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(self._keep(name))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # Back to the claim's own end (it stands for this interval's run), or gone
            # when the interval has passed during the run: the next run is due.
            left_ms = int((self._until.pop(name, 0.0) - time.monotonic()) * 1000)
            with contextlib.suppress(RedisUnavailable):
                if left_ms > 0:
                    await self._script(self._expire, name, left_ms)
                else:
                    await self._script(self._drop, name)

    async def _keep(self, name: str) -> None:
        """Keep the claim alive past its own end while the run goes on."""
        hold = HOLD_TTL_MS / 1000
        while True:
            left = self._until.get(name, 0.0) - time.monotonic()
            if left > hold / 2:
                await asyncio.sleep(left - hold / 2)
                continue
            with contextlib.suppress(RedisUnavailable):
                await self._script(self._expire, name, HOLD_TTL_MS)
            await asyncio.sleep(hold / 3)

    async def _script(self, script: Any, name: str, *args: int) -> Any:
        return await self._c.call(
            lambda r: script(keys=[key("sync", name)], args=[self._token, *args])
        )
