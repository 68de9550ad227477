"""When a stored blob is hashed again as it is served (``mirror.verify_on_read``).

Every byte on disk was verified when it was stored, but disks rot. Hashing every cached
read costs about 0.6 s of CPU per GiB (it halved warm throughput in the benchmark), so a
blob is re-hashed on a whole-blob read at most once per ``mirror.verify_interval`` in this
process (and at its first read after a start). A blob that fails is removed and fetched
again on the next request; the failing transfer is cut short, never completed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pullthrough.reference import Digest

# Digests remembered as recently verified; the oldest are forgotten (and re-verified).
MAX_REMEMBERED = 100_000


class ReadVerification:
    def __init__(
        self,
        *,
        enabled: bool,
        interval: float,
        quarantine: Callable[[Digest], Awaitable[None]],
    ) -> None:
        self.enabled = enabled
        self.interval = interval
        self._quarantine = quarantine
        self._verified: OrderedDict[str, float] = OrderedDict()

    def due(self, digest: Digest) -> bool:
        """Whether this read should hash the blob."""
        if not self.enabled:
            return False
        at = self._verified.get(str(digest))
        return at is None or time.monotonic() - at >= self.interval

    def passed(self, digest: Digest) -> None:
        key = str(digest)
        self._verified[key] = time.monotonic()
        self._verified.move_to_end(key)
        while len(self._verified) > MAX_REMEMBERED:
            self._verified.popitem(last=False)

    async def failed(self, digest: Digest) -> None:
        self._verified.pop(str(digest), None)
        await self._quarantine(digest)
