"""Manifests served lately, kept in memory.

A manifest is a few kilobytes (an index of many platforms a few megabytes) and immutable by
its digest, and pulls ask for the same ones again and again (every node of a fleet, every
CI job). Kept here once read, verified and parsed, a request by digest needs no file read,
no hash and no parse (who may read it is ``mirror.provenance``'s to say, not this memo's).
Bounded by bytes, least recently used first out; an entry goes as soon as the store drops
its digest (eviction, a failed verification), and the caller checks that the file is still
there before it serves an entry: another process (``pullthrough gc``) may have removed it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pullthrough.manifest import MAX_MANIFEST_SIZE

if TYPE_CHECKING:
    from pullthrough.mirror.manifests import Manifest

MAX_BYTES = 32 * 1024 * 1024
MAX_BODY = MAX_MANIFEST_SIZE
# What a served manifest references is marked in use at most this often (a large index
# references thousands of digests; once per request would be work for nothing).
TOUCH_INTERVAL = 1.0


@dataclass(slots=True)
class _Entry:
    manifest: Manifest
    touched: float = 0.0  # when its references were last marked in use
    checked: float = 0.0  # when its file was last seen in the store


class RecentManifests:
    def __init__(self, max_bytes: int = MAX_BYTES, max_body: int = MAX_BODY) -> None:
        self.max_bytes = max_bytes
        self.max_body = max_body
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, digest: str) -> Manifest | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        self._entries.move_to_end(digest)
        return entry.manifest

    def put(self, manifest: Manifest) -> None:
        """Keep a verified, parsed ``manifest``."""
        size = len(manifest.body)
        if size > self.max_body:
            return
        entry = self._entries.get(manifest.digest)
        if entry is None:
            entry = self._entries[manifest.digest] = _Entry(manifest)
            self.bytes += size
        self._entries.move_to_end(manifest.digest)
        while self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= len(oldest.manifest.body)

    def touch_due(self, digest: str) -> bool:
        """Whether the references of ``digest`` should be marked in use now (True at most
        once per TOUCH_INTERVAL while it is kept here; always when it is not)."""
        return self._due(digest, "touched")

    def check_due(self, digest: str) -> bool:
        """Whether to look again that the file of ``digest`` is still stored (at most once
        per TOUCH_INTERVAL while it is kept here). In between, a file another process
        removed is still served from memory, which is harmless (the bytes were verified);
        a look that finds it gone makes it a miss, fetched and stored again."""
        return self._due(digest, "checked")

    def _due(self, digest: str, stamp: Literal["touched", "checked"]) -> bool:
        entry = self._entries.get(digest)
        if entry is None:
            return True
        now = time.monotonic()
        if now - getattr(entry, stamp) < TOUCH_INTERVAL:
            return False
        setattr(entry, stamp, now)
        return True

    def forget(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self.bytes -= len(entry.manifest.body)
