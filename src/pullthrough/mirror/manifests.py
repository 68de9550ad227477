"""Manifest policy.

By digest: served from the store once cached, never asked for again (it cannot change).
By tag: revalidated with one upstream HEAD (concurrent revalidations of a tag coalesce into
one), served from the store when the digest is unchanged, fetched when it changed. When the
upstream is unreachable, times out, answers 5xx or 429, the cached copy is served (stale,
logged at warning); an upstream 404 is authoritative and drops the cached tag.

In cluster mode the HEAD and the fetch are coalesced across replicas as well (``flights``):
one HEAD per tag per ``tag_freshness`` window (or per burst of concurrent requests when it
is 0), one GET per manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pullthrough.errors import (
    BucketUnavailable,
    ManifestUnknown,
    TooManyRequests,
    UpstreamInvalid,
    UpstreamUnavailable,
)
from pullthrough.manifest import (
    INDEX_TYPES,
    NO_CHILDREN,
    Children,
    NotAManifest,
    check_manifest,
    children,
    detect_media_type,
    upstream_accept,
)
from pullthrough.metrics import Metrics
from pullthrough.mirror.provenance import Kind, Provenance
from pullthrough.mirror.recent import RecentManifests
from pullthrough.reference import Digest, parse_digest
from pullthrough.singleflight import SingleFlight
from pullthrough.store.blobs import BlobStore, DigestMismatch
from pullthrough.store.index import IndexBackend, TagRecord
from pullthrough.upstream.client import ManifestHead, UpstreamClient

log = logging.getLogger(__name__)

_STALE_ERRORS = (UpstreamUnavailable, TooManyRequests)

T = TypeVar("T")


class SharedFlights(Protocol):
    """Work done once across replicas (``pullthrough.cluster.flights.Flights``)."""

    async def do(
        self,
        name: str,
        work: Callable[[], Awaitable[T]],
        *,
        encode: Callable[[T], Any],
        decode: Callable[[Any], Awaitable[T | None]],
        reuse_for: float = 0.0,
    ) -> T: ...


@dataclass(frozen=True, slots=True)
class Manifest:
    """A verified manifest as the client gets it, and what it references (parsed once,
    off the event loop, when it was stored or read)."""

    digest: str
    media_type: str
    body: bytes
    stale: bool = False
    children: Children = NO_CHILDREN


@dataclass(frozen=True, slots=True)
class _Confirmed:
    """What one revalidation of a tag found, shared by every request that joined it."""

    head: ManifestHead | None  # None: the upstream does not know the tag
    local: Manifest | None = None  # the stored manifest the upstream's digest names


class ManifestService:
    def __init__(
        self,
        *,
        store: BlobStore,
        index: IndexBackend,
        provenance: Provenance,
        metrics: Metrics,
        flights: SharedFlights | None = None,
        quarantine: Callable[[Digest], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.provenance = provenance
        self.metrics = metrics
        self._flights = flights
        self._quarantine = quarantine
        self.recent = RecentManifests()
        self._heads: SingleFlight[_Confirmed] = SingleFlight(
            on_join=metrics.coalesced.labels("tag").inc
        )
        self._gets: SingleFlight[Manifest] = SingleFlight()

    async def by_digest(self, upstream: UpstreamClient, repo: str, digest: Digest) -> Manifest:
        """The manifest ``digest`` of ``repo``: local if present and this repository may read
        it (``mirror.provenance``), else fetched, verified and stored."""
        local = await self._local(upstream, repo, str(digest))
        if local is not None:
            self._count(upstream, "hit")
            return local
        self._count(upstream, "miss")
        return await self._gets.do(
            ("digest", upstream.name, repo, str(digest)),
            lambda: self._fetch(upstream, repo, str(digest), digest, ()),
        )

    async def by_tag(
        self, upstream: UpstreamClient, repo: str, tag: str, accept: tuple[str, ...]
    ) -> Manifest:
        """The manifest ``tag`` points at now, or the cached one when the upstream cannot say."""
        freshness = upstream.config.tag_freshness
        cached: TagRecord | None = None
        if freshness > 0:
            cached = _latest(await self.index.tag(upstream.name, repo, tag))
            if cached is not None and time.time() - cached.checked < freshness:
                local = await self._recorded(upstream.name, repo, cached)
                if local is not None:
                    self._count(upstream, "hit")
                    return local
        wanted = upstream_accept(accept)
        try:
            confirmed = await self._heads.do(
                (upstream.name, repo, tag, wanted),
                lambda: self._confirm(upstream, repo, tag, wanted),
            )
            head, local = confirmed.head, confirmed.local
            if head is None:
                raise ManifestUnknown(
                    f"manifest {repo}:{tag} is unknown to upstream {upstream.name}",
                    detail={"name": repo, "tag": tag},
                )
            if local is not None:
                # The upstream was asked with every type the mirror stores, so the manifest
                # it named is the tag's answer whatever this client's Accept lists.
                self._count(upstream, "hit")
                return local
            # Fetch by digest when the HEAD named one: immutable, and verifiable on arrival.
            expected = _maybe_digest(head.digest)
            reference = str(expected) if expected else tag
            self._count(upstream, "miss")
            log.info("cache miss: manifest %s:%s on %s", repo, tag, upstream.name)
            return await self._gets.do(
                ("tag", upstream.name, repo, tag, wanted, reference),
                lambda: self._fetch(upstream, repo, reference, expected, wanted, tag=tag),
            )
        except _STALE_ERRORS as exc:
            if freshness <= 0:
                cached = _latest(await self.index.tag(upstream.name, repo, tag))
            if cached is None:
                raise
            local = await self._recorded(upstream.name, repo, cached)
            if local is None:
                raise
            log.warning("serving %s:%s from cache (stale, %s): %s", repo, tag, cached.digest, exc)
            self._count(upstream, "stale")
            return Manifest(
                local.digest, local.media_type, local.body, stale=True, children=local.children
            )

    async def listed_by(self, digest: str, media_type: str) -> tuple[str, ...]:
        """The manifests a stored index (or manifest list) lists in its ``manifests``
        field; nothing for any other type or when it is no longer stored."""
        if media_type not in INDEX_TYPES:
            return ()
        manifest = await self._stored(digest, media_type)
        return manifest.children.manifests if manifest is not None else ()

    async def _confirm(
        self, upstream: UpstreamClient, repo: str, tag: str, wanted: tuple[str, ...]
    ) -> _Confirmed:
        """One upstream HEAD for the tag; when it names a manifest stored here that this
        repository may read, that manifest is read and the tag's resolution recorded once
        for all the requests that joined (not once per request: under load most requests
        for a tag join a revalidation)."""
        head = await self._revalidate(upstream, repo, tag, wanted)
        if head is None:
            await self.index.drop_tag(upstream.name, repo, tag)
            return _Confirmed(None)
        if not head.digest:
            return _Confirmed(head)
        digest = _maybe_digest(head.digest)
        local = await self._local(upstream, repo, str(digest), named=True) if digest else None
        if local is not None:
            if await self.index.set_tag(
                upstream.name, repo, tag, media_type=local.media_type, digest=local.digest
            ):
                await self.provenance.referenced(
                    upstream.name, repo, local.digest, local.children.all
                )
            else:
                # The index dropped it since it was read (gc in another process): a
                # miss, fetched and recorded again, never a tag naming nothing.
                self._dropped(local.digest)
                local = None
        return _Confirmed(head, local)

    def _count(self, upstream: UpstreamClient, result: str) -> None:
        self.metrics.cache.labels("manifest", result, upstream.name).inc()

    async def _revalidate(
        self, upstream: UpstreamClient, repo: str, tag: str, accept: tuple[str, ...]
    ) -> ManifestHead | None:
        if self._flights is None:
            return await self._head(upstream, repo, tag, accept)
        return await self._flights.do(
            _flight_name("head", upstream.name, repo, tag, accept),
            lambda: self._head(upstream, repo, tag, accept),
            encode=_head_to_json,
            decode=_head_from_json,
            reuse_for=upstream.config.tag_freshness,
        )

    async def _head(
        self, upstream: UpstreamClient, repo: str, tag: str, accept: tuple[str, ...]
    ) -> ManifestHead | None:
        self.metrics.revalidations.labels(upstream.name).inc()
        return await upstream.head_manifest(repo, tag, accept)

    async def _fetch(
        self,
        upstream: UpstreamClient,
        repo: str,
        reference: str,
        expected: Digest | None,
        accept: tuple[str, ...],
        *,
        tag: str | None = None,
    ) -> Manifest:
        if self._flights is None:
            return await self._get(upstream, repo, reference, expected, accept, tag=tag)

        async def stored(doc: Any) -> Manifest | None:
            # The replica that fetched it stored it in the shared store and index. What
            # Redis names is untrusted: the digest must parse and this repository must be
            # allowed to read it, as for any other read.
            digest = _maybe_digest(doc.get("digest") if isinstance(doc, dict) else None)
            if digest is None:
                return None
            local = await self._local(upstream, repo, str(digest))
            if local is not None and tag is not None:
                # Written again from here so that this replica's index remembers the tag
                # (it can then serve it stale while Redis and the upstream are both down).
                await self.index.set_tag(
                    upstream.name, repo, tag, media_type=local.media_type, digest=local.digest
                )
            return local

        async def get() -> Manifest:
            if expected is not None:
                # Another replica may have stored it since this one looked: by digest, that
                # copy is the answer (the flight's lock only orders the replicas' GETs).
                local = await self._local(upstream, repo, str(expected), named=tag is not None)
                if local is not None:
                    if tag is not None:
                        await self.index.set_tag(
                            upstream.name,
                            repo,
                            tag,
                            media_type=local.media_type,
                            digest=local.digest,
                        )
                    return local
            return await self._get(upstream, repo, reference, expected, accept, tag=tag)

        return await self._flights.do(
            _flight_name("get", upstream.name, repo, reference, accept),
            get,
            encode=lambda m: {"digest": m.digest, "media_type": m.media_type},
            decode=stored,
        )

    async def _get(
        self,
        upstream: UpstreamClient,
        repo: str,
        reference: str,
        expected: Digest | None,
        accept: tuple[str, ...],
        *,
        tag: str | None = None,
    ) -> Manifest:
        got = await upstream.get_manifest(repo, reference, upstream_accept(accept))
        if got is None:
            if tag is not None:
                await self.index.drop_tag(upstream.name, repo, tag)
            raise ManifestUnknown(
                f"manifest {repo}:{tag or reference} is unknown to upstream {upstream.name}",
                detail={"name": repo, "reference": reference},
            )
        try:
            digest, media_type, refs = await asyncio.to_thread(
                _arrived, got.body, got.media_type, expected, got.digest
            )
        except NotAManifest as exc:
            raise UpstreamInvalid(
                f"upstream {upstream.name} answered {repo}:{reference} with something that "
                f"is not a manifest ({exc}); it was not stored"
            ) from exc
        except DigestMismatch as exc:
            raise UpstreamInvalid(
                f"upstream {upstream.name} sent a manifest for {reference} {exc}; "
                "it was not stored"
            ) from exc
        try:
            await self.store.put(digest, got.body)
        except BucketUnavailable as exc:
            # storage.s3 and the bucket refused it: the client still gets the verified
            # manifest, and nothing records it (the next request fetches it again).
            log.warning("manifest %s is served but not kept: %s", digest, exc.message)
            return Manifest(str(digest), media_type, got.body, children=refs)
        await self.provenance.served(
            upstream.name,
            repo,
            str(digest),
            len(got.body),
            media_type=media_type,
            references=refs.all,
        )
        if tag is not None:
            await self.index.set_tag(
                upstream.name, repo, tag, media_type=media_type, digest=str(digest)
            )
        manifest = Manifest(str(digest), media_type, got.body, children=refs)
        self.recent.put(manifest)
        return manifest

    async def _local(
        self, upstream: UpstreamClient, repo: str, digest: str, *, named: bool = False
    ) -> Manifest | None:
        """The stored manifest ``digest``, if this repository may read it (``named``: the
        upstream has just named it for the repository); None when it must be fetched."""
        if not await self.provenance.readable(upstream, repo, digest, Kind.MANIFEST, named=named):
            return None
        return await self._stored(digest, None)

    async def _recorded(
        self, upstream: str, repo: str, record: TagRecord
    ) -> Manifest | None:
        """The stored manifest a cached tag names, without asking the upstream."""
        if not await self.provenance.recorded(upstream, repo, record.digest):
            return None
        return await self._stored(record.digest, record.media_type)

    async def _stored(self, digest: str, media_type: str | None) -> Manifest | None:
        """The stored manifest, verified and parsed; None when it is not stored (or no
        longer matches its digest: then it is dropped, and fetched again by the caller).
        Callers have asked ``mirror.provenance`` first."""
        parsed = parse_digest(digest)
        manifest = self.recent.get(digest)
        if (
            manifest is not None
            and self.recent.check_due(digest)
            and not await self.store.exists(parsed)
        ):
            # Kept here, but its file is gone: removed by another process (``pullthrough
            # gc`` or ``verify --repair`` beside this server), which cannot tell this
            # one. Served from memory it would not be fetched and stored again, and its
            # tag would be recorded for a manifest the store no longer holds. Looked at
            # once a second, not per request: a thread hop per GET halved the rate of
            # manifest GETs by digest (bench/run.py).
            log.info("manifest %s is no longer stored: fetched again", digest)
            self._dropped(digest)
            return None
        if manifest is None:
            if media_type is None:
                record = await self.index.blob(digest)
                media_type = record.media_type if record and record.media_type else None
            try:
                manifest = await asyncio.to_thread(self._load, parsed, media_type)
            except DigestMismatch:
                log.error("stored manifest %s no longer matches its digest: dropped", digest)
                if self._quarantine is not None:
                    await self._quarantine(parsed)
                return None
            if manifest is None:
                self._dropped(digest)
                return None
            self.recent.put(manifest)
        self._touch(manifest)
        return manifest

    def _dropped(self, digest: str) -> None:
        """``digest`` left the store: nothing remembered about it stands."""
        self.recent.forget(digest)
        self.provenance.forget(digest)

    def _load(self, digest: Digest, media_type: str | None) -> Manifest | None:
        # Off the event loop: reading, hashing and parsing a large index takes milliseconds.
        body = self.store.read_verified_sync(digest)
        if body is None:
            return None
        kind = media_type or detect_media_type(body, None)
        return Manifest(str(digest), kind, body, children=children(body, kind))

    def _touch(self, manifest: Manifest) -> None:
        """Served: the manifest and what it references are in use. A client that has the
        layers asks only for the manifest, and they must not expire under it."""
        self.index.touch(manifest.digest)
        if self.recent.touch_due(manifest.digest):
            for child in manifest.children.all:
                self.index.touch(child)


def _latest(records: list[TagRecord]) -> TagRecord | None:
    """A tag's latest cached resolution, whatever the client's Accept lists: the upstream
    is asked with every type the mirror stores (``upstream_accept``), so the freshest record
    is what the tag names now; an older one of a type the client prefers may be a manifest
    the tag has since moved away from."""
    return records[0] if records else None


def _flight_name(kind: str, upstream: str, repo: str, ref: str, accept: tuple[str, ...]) -> str:
    # The Accept list can be long: a hash of it keeps the Redis key short and readable.
    wanted = hashlib.sha256("\n".join(accept).encode()).hexdigest()[:16]
    return "|".join((kind, upstream, repo, ref, wanted))


def _head_to_json(head: ManifestHead | None) -> Any:
    if head is None:
        return None
    return {"digest": head.digest, "media_type": head.media_type, "size": head.size}


async def _head_from_json(doc: Any) -> ManifestHead | None:
    return ManifestHead(doc.get("digest"), doc.get("media_type"), doc.get("size"))


def _maybe_digest(text: str | None) -> Digest | None:
    if not text:
        return None
    try:
        return parse_digest(text)
    except Exception:
        return None


def _arrived(
    body: bytes, header_type: str | None, expected: Digest | None, header_digest: str | None
) -> tuple[Digest, str, Children]:
    """A manifest body from the upstream: its digest (checked against the one asked for, or
    the one the upstream claimed), media type and references. Raises DigestMismatch or
    NotAManifest. Runs off the event loop: a large index takes milliseconds to hash and parse."""
    algorithm = expected.algorithm if expected else "sha256"
    actual = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
    if expected is not None and actual != expected:
        raise DigestMismatch(f"whose digest is {actual}, not {expected}")
    if header_digest and expected is None:
        claimed = _maybe_digest(header_digest)
        if claimed is not None and claimed.algorithm == algorithm and claimed != actual:
            raise DigestMismatch(
                f"whose digest {actual} does not match its Docker-Content-Digest {claimed}"
            )
    media_type = check_manifest(body, header_type)
    return actual, media_type, children(body, media_type)
