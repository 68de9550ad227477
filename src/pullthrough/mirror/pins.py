"""What is kept for good: pinned tags (``mirror.pins`` and ``pullthrough pin``), the
manifests they resolve to and everything those reference (every platform of an index, their
configs and layers). Eviction, by TTL or by ``mirror.maxsize``, never removes them.

A pin names tags by glob; which digests it keeps is read from the index (the tags' cached
resolutions) and the stored manifests at each sweep, so a pinned tag that moves keeps its
new target from the next pass on, and its old one becomes ordinary content again.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Iterable

from pullthrough.config.model import Pin
from pullthrough.manifest import children
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore, DigestMismatch
from pullthrough.store.index import IndexBackend

log = logging.getLogger(__name__)

# A manifest tree is shallow (index → manifests → blobs); deeper nesting is not followed.
MAX_DEPTH = 4


async def all_pins(configured: Iterable[Pin], index: IndexBackend) -> list[Pin]:
    """The config's pins and those ``pullthrough pin`` kept in the index."""
    found = dict.fromkeys(configured)
    for upstream, repo, tag in await index.pins():
        found.setdefault(Pin(upstream, repo, tag))
    return list(found)


async def pinned_digests(
    pins: Iterable[Pin], *, index: IndexBackend, store: BlobStore
) -> set[str]:
    """Every stored digest a pin keeps."""
    kept: set[str] = set()
    roots: list[tuple[str, str | None]] = []
    for pin in pins:
        for tag in await index.tags(pin.upstream, pin.repository):
            if fnmatch.fnmatchcase(tag, pin.tag):
                for record in await index.tag(pin.upstream, pin.repository, tag):
                    roots.append((record.digest, record.media_type))
    for digest, media_type in roots:
        await _keep_tree(digest, media_type, kept, index=index, store=store, depth=0)
    return kept


async def _keep_tree(
    digest: str,
    media_type: str | None,
    kept: set[str],
    *,
    index: IndexBackend,
    store: BlobStore,
    depth: int,
) -> None:
    if digest in kept or depth > MAX_DEPTH:
        return
    kept.add(digest)
    if media_type is None:
        record = await index.blob(digest)
        if record is None or record.media_type is None:
            return  # a blob, or not stored: nothing below it
        media_type = record.media_type
    try:
        parsed = parse_digest(digest)
    except Exception:  # a malformed record (Redis is untrusted): nothing to follow
        return
    try:
        body = await asyncio.to_thread(store.read_verified_sync, parsed)
    except DigestMismatch:
        return  # the scrub or the next read removes it; nothing it names can be trusted
    if body is None:
        return  # not stored (yet): what it references is kept once it is
    refs = children(body, media_type)
    for blob in refs.blobs:
        kept.add(blob)
    for child in refs.manifests:
        await _keep_tree(child, None, kept, index=index, store=store, depth=depth + 1)
