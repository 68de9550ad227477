"""Whether a stored blob may be sent as it is, or must be hashed again as it is served
(``mirror.verify_on_read``).

Every blob was verified when it was stored, and ``BlobStore.verified`` remembers what its
file looked like then (``store.identity``). A read whose open file still has that identity
is sent without hashing (sendfile); any other — a file written, replaced or touched since,
or one this process has not verified yet (the first read after a start) — is hashed as it
is sent, and its last byte goes out only when the hash matches. A blob that fails is
removed and fetched again on the next request; the failing transfer is cut short, never
completed. Bit rot that changes no metadata is the background scrub's (``mirror.scrub``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pullthrough.metrics import Metrics
from pullthrough.reference import Digest
from pullthrough.store.identity import FileIdentity, VerifiedFiles


class ReadVerification:
    def __init__(
        self,
        *,
        enabled: bool,
        verified: VerifiedFiles,
        quarantine: Callable[[Digest], Awaitable[None]],
        metrics: Metrics,
    ) -> None:
        self.enabled = enabled
        self._verified = verified
        self._quarantine = quarantine
        self.metrics = metrics

    def trusted(self, digest: Digest, identity: FileIdentity) -> bool:
        """Whether a file with ``identity`` is the one verified as ``digest``."""
        return self._verified.matches(digest, identity)

    def passed(self, digest: Digest, identity: FileIdentity) -> None:
        """The file with ``identity`` (as stat'ed before it was hashed) matched."""
        self._verified.record(digest, identity)

    async def failed(self, digest: Digest) -> None:
        """The stored file does not match: count it, drop it (the next request fetches)."""
        self._verified.forget(digest)
        self.metrics.corrupt_blobs.labels("read").inc()
        await self._quarantine(digest)


VERIFY_KEY = web.AppKey("verify", ReadVerification)
