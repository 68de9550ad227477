"""Manifests served lately, kept in memory.

A manifest is a few kilobytes and immutable by its digest, and pulls ask for the same ones
again and again (every node of a fleet, every CI job). Kept here once read and verified,
with the repositories each was confirmed to belong to, a request by digest needs no file
read, no hash and no index query. Bounded by bytes, least recently used first out; an entry
goes as soon as the store drops its digest (eviction, a failed verification).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pullthrough.manifest import children

if TYPE_CHECKING:
    from pullthrough.mirror.manifests import Manifest

MAX_BYTES = 32 * 1024 * 1024
MAX_BODY = 1024 * 1024  # larger manifests (huge indexes) are read from the store each time


@dataclass(slots=True)
class _Entry:
    manifest: Manifest
    repos: set[tuple[str, str]] = field(default_factory=set)  # (upstream, repo) confirmed
    children: tuple[str, ...] | None = None  # what it references, parsed once


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

    def linked(self, upstream: str, repo: str, digest: str) -> Manifest | None:
        """The manifest, if it is here and known to belong to ``repo`` of ``upstream``."""
        entry = self._entries.get(digest)
        if entry is None or (upstream, repo) not in entry.repos:
            return None
        self._entries.move_to_end(digest)
        return entry.manifest

    def put(self, manifest: Manifest, link: tuple[str, str] | None = None) -> None:
        """Keep a verified ``manifest`` (and that it belongs to ``link``, when given)."""
        size = len(manifest.body)
        if size > self.max_body:
            return
        entry = self._entries.get(manifest.digest)
        if entry is None:
            entry = self._entries[manifest.digest] = _Entry(manifest)
            self.bytes += size
        self._entries.move_to_end(manifest.digest)
        if link is not None:
            entry.repos.add(link)
        while self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= len(oldest.manifest.body)

    def children(self, digest: str, body: bytes) -> tuple[str, ...]:
        """The digests the manifest references (its blobs, an index's manifests), parsed
        once while it is kept here."""
        entry = self._entries.get(digest)
        if entry is not None and entry.children is not None:
            return entry.children
        found = children(body).all
        if entry is not None:
            entry.children = found
        return found

    def forget(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self.bytes -= len(entry.manifest.body)
