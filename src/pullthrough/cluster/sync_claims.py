"""``mirror.sync`` in cluster mode: one replica runs each sync per interval.

A run is claimed with ``SET sync|<entry> <replica> NX PX <interval>``: the replica that
sets the key runs the entry, every other replica finds it set and does not. The key is
left to expire (not deleted at the end of the run): it is the record that this interval's
run happened, so a replica that asks a moment later does not run it again. A run that
lasts longer than its interval keeps the key alive while it works (``holding``), so no
second run starts beside it; a replica that dies mid-run frees the entry within
``HOLD_TTL``. When Redis does not answer, no replica claims anything: a sync runs late
rather than on every replica at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from pullthrough.cluster.connection import Coordination, RedisUnavailable, key

log = logging.getLogger(__name__)

# While a run lasts, its claim is kept at least this long (ms), renewed every third of it.
HOLD_TTL_MS = 30_000

# Extend the claim if this replica still holds it and less than ARGV[2] ms are left.
_HOLD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


class SyncClaims:
    """Implements ``pullthrough.mirror.sync.Claims`` with keys in Redis."""

    def __init__(self, coordination: Coordination) -> None:
        self._c = coordination
        self._token = f"{coordination.node}#{uuid.uuid4().hex[:12]}"
        self._hold = coordination.client.register_script(_HOLD)

    async def claim(self, name: str, seconds: float) -> bool:
        ms = max(1, int(seconds * 1000))
        try:
            taken = await self._c.call(
                lambda r: r.set(key("sync", name), self._token, nx=True, px=ms)
            )
        except RedisUnavailable:
            log.warning("sync %s: redis does not answer; not run on this replica now", name)
            return False
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

    async def _keep(self, name: str) -> None:
        while True:
            with contextlib.suppress(RedisUnavailable):
                await self._c.call(
                    lambda r: self._hold(keys=[key("sync", name)], args=[self._token, HOLD_TTL_MS])
                )
            await asyncio.sleep(HOLD_TTL_MS / 3000)
