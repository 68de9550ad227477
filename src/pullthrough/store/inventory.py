"""What the store holds, read for the operator's ``ls`` and ``du``: every stored object, what
each repository links to, and the images (a manifest and what it references) they form.

Read-only: nothing here writes to the index or the files, so both commands are safe to run
next to a serving mirror (SQLite in WAL mode lets readers in while the server writes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pullthrough.errors import DigestInvalid
from pullthrough.manifest import MAX_MANIFEST_SIZE, children, detect_media_type
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import AgedBlob, IndexBackend

# ``least_recent`` with no effective limit is the index's only "every object" query.
_ALL = 2**62
# An index of indexes is legal; deeper nesting than this is a loop or garbage.
MAX_DEPTH = 8


def iso(timestamp: float | None) -> str | None:
    """UTC ISO 8601 (``2024-05-01T12:00:00Z``), None for never."""
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def stored_objects(index: IndexBackend) -> dict[str, AgedBlob]:
    """Every object the index knows to be stored, by digest."""
    rows = await index.least_recent(_ALL, accessed_before=math.inf)
    return {row.digest: row for row in rows}


@dataclass
class Image:
    """A manifest and everything it references, as far as the store holds it."""

    digest: str
    media_type: str | None = None
    stored: set[str] = field(default_factory=set)  # the manifest itself included
    missing: set[str] = field(default_factory=set)  # referenced, not stored
    size: int = 0
    last_access: float = 0.0


class Walker:
    """Totals images from the manifests in the store; reads each manifest once."""

    def __init__(self, store: BlobStore, objects: dict[str, AgedBlob]) -> None:
        self.store = store
        self.objects = objects
        self._bodies: dict[str, bytes | None] = {}

    async def body(self, digest: str) -> bytes | None:
        """A stored manifest's bytes; None when absent or too big to be a manifest (a layer
        someone listed under ``manifests`` is not read into memory)."""
        if digest not in self._bodies:
            record = self.objects.get(digest)
            body: bytes | None = None
            if record is not None and record.size <= MAX_MANIFEST_SIZE:
                try:
                    body = await self.store.read(parse_digest(digest))
                except DigestInvalid:
                    body = None
            self._bodies[digest] = body
        return self._bodies[digest]

    async def image(self, digest: str) -> Image:
        image = Image(digest)
        await self._visit(image, digest, is_manifest=True, depth=0)
        top = await self.body(digest)
        if top is not None:
            image.media_type = detect_media_type(top, None)
        image.size = sum(self.objects[d].size for d in image.stored)
        image.last_access = max((self.objects[d].last_access for d in image.stored), default=0.0)
        return image

    async def referenced(self, digest: str) -> set[str]:
        """What a stored manifest references directly (blobs and child manifests)."""
        body = await self.body(digest)
        if body is None:
            return set()
        return set(children(body).all)

    async def _visit(self, image: Image, digest: str, *, is_manifest: bool, depth: int) -> None:
        if digest in image.stored or digest in image.missing:
            return  # a layer shared by two platforms counts once
        if digest not in self.objects:
            image.missing.add(digest)
            return
        image.stored.add(digest)
        if not is_manifest or depth >= MAX_DEPTH:
            return
        body = await self.body(digest)
        if body is None:
            return
        kids = children(body)
        for blob in kids.blobs:
            await self._visit(image, blob, is_manifest=False, depth=depth + 1)
        for child in kids.manifests:
            await self._visit(image, child, is_manifest=True, depth=depth + 1)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    files: int
    bytes: int
    allocated: int


def disk_usage(path: Path) -> DiskUsage:
    """Every regular file under ``path`` (blocking): count, apparent bytes, and bytes
    allocated on disk (what ``du`` reports), so a stray non-blob file is seen too."""
    files = size = allocated = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    files += 1
                    size += st.st_size
                    allocated += st.st_blocks * 512
            except FileNotFoundError:
                continue  # removed by the server's eviction while we looked
    return DiskUsage(files, size, allocated)


def table(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
