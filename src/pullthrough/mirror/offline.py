"""The offline switch per upstream: an upstream switched off is never contacted; what is
cached is served (tags included, however old) and everything else answers 503.

Its state is the upstream's ``offline`` in the config, unless ``pullthrough offline
UPSTREAM on|off`` set it since: that switch is kept in the index (in Redis in cluster
mode, so every replica follows it), and each server reads it every second.
"""

from __future__ import annotations

import asyncio
import logging

from pullthrough.mirror.upstreams import Upstreams
from pullthrough.store.index import IndexBackend

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


class OfflineSwitches:
    """Keeps each configured upstream client's ``offline`` as the index says."""

    def __init__(self, *, index: IndexBackend, upstreams: Upstreams) -> None:
        self._index = index
        self._upstreams = upstreams

    async def apply(self) -> None:
        """Read the switches once and set every configured upstream accordingly."""
        switches = await self._index.offline_switches()
        for client in self._upstreams.configured():
            offline = switches.get(client.name, client.config.offline)
            if offline == client.offline:
                continue
            client.offline = offline
            if offline:
                log.warning(
                    "upstream %s is offline: it is not contacted, only cached content is served",
                    client.name,
                )
            else:
                log.warning("upstream %s is online again", client.name)

    async def run_forever(self, interval: float = POLL_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.apply()
            except Exception:  # read again next time; until then the switches stay as they are
                log.exception("reading the offline switches failed")
