"""Which replica holds a hosted upload session, for replicas on a bucket (no shared
filesystem): a session's bytes are a file on the disk of the replica that started it, and
a chunk or the end of the upload may reach any replica (a load balancer sends each request
where it likes). Redis maps the session to its replica's ``advertise`` URL
(``upload|<id>``, for as long as an idle session lives); the replica a request reaches
forwards it there (``server.forwarding``).

What Redis says is checked before it is dialled (``cluster.peers.peer_url``); a session
id is 32 hex digits (``hosted.uploads``) before it is a key.
"""

from __future__ import annotations

import contextlib
import logging

from pullthrough.cluster.connection import Coordination, RedisUnavailable, key
from pullthrough.cluster.peers import peer_url

log = logging.getLogger(__name__)

# Gone from Redis a while after the session itself is removed as idle.
GRACE_MS = 60_000


class UploadOwners:
    def __init__(self, coordination: Coordination, idle: float) -> None:
        self._c = coordination
        self._ttl_ms = int(idle * 1000) + GRACE_MS

    async def started(self, session_id: str) -> None:
        """Name this replica as the session's; without Redis the session still works for
        requests that reach this replica."""
        try:
            await self._c.call(
                lambda r: r.set(key("upload", session_id), self._c.node, px=self._ttl_ms)
            )
        except RedisUnavailable as exc:
            log.warning("upload session %s not announced to the cluster: %s", session_id, exc)

    async def touched(self, session_id: str) -> None:
        # Without redis the session lives on here; its entry lapses sooner.
        with contextlib.suppress(RedisUnavailable):
            await self._c.call(lambda r: r.pexpire(key("upload", session_id), self._ttl_ms))

    async def ended(self, session_id: str) -> None:
        with contextlib.suppress(RedisUnavailable):  # else it lapses with its time to live
            await self._c.call(lambda r: r.delete(key("upload", session_id)))

    async def owner(self, session_id: str) -> str | None:
        """The base URL of the replica holding the session, if it is another one."""
        try:
            node = await self._c.call(lambda r: r.get(key("upload", session_id)))
        except RedisUnavailable:
            return None
        if not isinstance(node, str) or node == self._c.node:
            return None
        return peer_url(node)
