"""The referrers API (OCI distribution 1.1) for mirrored repositories.

The upstream's answer is the answer: ``GET /v2/<name>/referrers/<digest>`` is passed
through and cached like a tag (fresh for ``tag_freshness``, then asked again). Where the
upstream lacks the API (404), the referrers tag scheme is read instead, as clients do: the
index tagged ``<alg>-<hex>`` lists the referrers (read through ``ManifestService``, so it is
stored, revalidated and served stale like any tag). When the upstream is unreachable, the
last answer is served. Only descriptors are returned: the manifests they name are pulled
through the mirror as any other, and ``mirror.provenance`` decides who reads them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pullthrough.errors import (
    ManifestUnknown,
    TooManyRequests,
    UpstreamInvalid,
    UpstreamUnavailable,
)
from pullthrough.manifest import INDEX_TYPES, OCI_INDEX
from pullthrough.mirror.manifests import ManifestService
from pullthrough.reference import Digest, parse_digest
from pullthrough.singleflight import SingleFlight
from pullthrough.upstream.client import UpstreamClient

log = logging.getLogger(__name__)

# Answers kept in memory (one per subject asked about); the oldest go first. A few
# hundred bytes each: 10,000 bound the memory to a few MiB.
MAX_CACHED = 10_000

_STALE_ERRORS = (UpstreamUnavailable, TooManyRequests)

Descriptor = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Referrers:
    """What a client gets: the descriptors (filtered when ``filtered``), and whether they
    are an earlier answer served because the upstream could not be asked."""

    descriptors: tuple[Descriptor, ...]
    filtered: bool = False
    stale: bool = False


@dataclass(frozen=True, slots=True)
class _Answer:
    checked: float
    descriptors: tuple[Descriptor, ...]


class ReferrersService:
    def __init__(self, *, manifests: ManifestService, max_cached: int = MAX_CACHED) -> None:
        self.manifests = manifests
        self._max = max_cached
        self._cache: OrderedDict[tuple[str, str, str], _Answer] = OrderedDict()
        self._asks: SingleFlight[tuple[Descriptor, ...]] = SingleFlight()

    async def referrers(
        self,
        upstream: UpstreamClient,
        repo: str,
        subject: Digest,
        artifact_type: str | None,
        *,
        permit_tag: Callable[[str], Awaitable[None]],
    ) -> Referrers:
        """The manifests of ``repo`` whose subject is ``subject`` (only those of
        ``artifact_type`` when given), as the upstream lists them now, or as it last did
        when it cannot be asked. ``permit_tag`` raises when the fallback tag may not be
        read (``mirror.policy``)."""
        key = (upstream.name, repo, str(subject))
        cached = self._cache.get(key)
        freshness = upstream.config.tag_freshness
        if cached is not None and freshness > 0 and time.time() - cached.checked < freshness:
            return _filtered(cached.descriptors, artifact_type)
        try:
            found = await self._asks.do(key, lambda: self._ask(upstream, repo, subject, permit_tag))
        except _STALE_ERRORS as exc:
            if cached is None:
                # Nothing in memory (a restart since): the tag scheme's index, if it was
                # ever read, is in the store, and ``by_tag`` serves it stale.
                found, _ = await self._by_tag_scheme(upstream, repo, subject, permit_tag)
                return _filtered(found, artifact_type, stale=True)
            log.warning("serving referrers of %s in %s from cache (stale): %s", subject, repo, exc)
            return _filtered(cached.descriptors, artifact_type, stale=True)
        return _filtered(found, artifact_type)

    async def _ask(
        self,
        upstream: UpstreamClient,
        repo: str,
        subject: Digest,
        permit_tag: Callable[[str], Awaitable[None]],
    ) -> tuple[Descriptor, ...]:
        body = await upstream.referrers(repo, str(subject))
        if body is None:
            found, fresh = await self._by_tag_scheme(upstream, repo, subject, permit_tag)
        else:
            try:
                found, fresh = await asyncio.to_thread(_descriptors, body), True
            except ValueError as exc:
                raise UpstreamInvalid(
                    f"upstream {upstream.name} answered the referrers of {subject} in {repo} "
                    f"with something that is not an image index ({exc})"
                ) from exc
        if fresh:
            self._remember((upstream.name, repo, str(subject)), found)
        return found

    async def _by_tag_scheme(
        self,
        upstream: UpstreamClient,
        repo: str,
        subject: Digest,
        permit_tag: Callable[[str], Awaitable[None]],
    ) -> tuple[tuple[Descriptor, ...], bool]:
        """The referrers an index tagged ``<alg>-<hex>`` lists (the spec's fallback for
        registries without the API; none when there is no such tag), and whether the
        upstream confirmed the tag (else it was served from the store, stale)."""
        # The spec's tag: the digest's hex truncated to 64 characters.
        tag = f"{subject.algorithm}-{subject.hex[:64]}"
        await permit_tag(tag)
        try:
            index = await self.manifests.by_tag(upstream, repo, tag, (OCI_INDEX,))
        except ManifestUnknown:
            return (), True
        if index.media_type not in INDEX_TYPES:
            log.warning("%s:%s is not an index; no referrers read from it", repo, tag)
            return (), not index.stale
        try:
            return await asyncio.to_thread(_descriptors, index.body), not index.stale
        except ValueError:
            log.warning("%s:%s is not a readable index; no referrers read from it", repo, tag)
            return (), not index.stale

    def _remember(self, key: tuple[str, str, str], found: tuple[Descriptor, ...]) -> None:
        self._cache[key] = _Answer(time.time(), found)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)


def _filtered(
    found: tuple[Descriptor, ...], artifact_type: str | None, *, stale: bool = False
) -> Referrers:
    if artifact_type is None:
        return Referrers(found, stale=stale)
    kept = tuple(d for d in found if d.get("artifactType") == artifact_type)
    return Referrers(kept, filtered=True, stale=stale)


def _descriptors(body: bytes) -> tuple[Descriptor, ...]:
    """The well-formed manifest descriptors of an index body; raises ValueError when it
    is not an index. What an upstream sends is untrusted: each descriptor is rebuilt from
    the fields the spec defines, checked for type, and dropped when its digest or size is
    not one."""
    doc = json.loads(body)
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no manifests list")
    out: list[Descriptor] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            digest = str(parse_digest(str(entry.get("digest"))))
        except Exception:
            continue
        size, media_type = entry.get("size"), entry.get("mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            continue
        if not isinstance(media_type, str):
            continue
        descriptor: Descriptor = {"mediaType": media_type, "digest": digest, "size": size}
        artifact = entry.get("artifactType")
        if isinstance(artifact, str) and artifact:
            descriptor["artifactType"] = artifact
        annotations = entry.get("annotations")
        if isinstance(annotations, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            descriptor["annotations"] = annotations
        out.append(descriptor)
    return tuple(out)
