"""Who may read a digest: the one rule every read path asks (design.md, "Who may read a
digest").

Bytes are shared on disk by digest; the right to read them is per (upstream U, repository
R). A stored digest D is readable through (U, R) only if U itself served D's bytes at some
time, verified against D, and

  (a) U served them for R, or
  (b) a verified manifest U served for R references D through a field its media type
      defines (``pullthrough.manifest.children``), or
  (c) U answers a HEAD for D in R's scope (an upstream's word counts only about content it
      has shown it has).

Hosted repositories (``mirror.hosted``) add one source, and for them it is the only one:

  (d) the bytes were pushed to R (or mounted into it from a repository the pusher may
      read) and verified.

A hosted R reads nothing an upstream or another repository brought until it is pushed
(or mounted) there, even though the file on disk is the same.

Bytes that only another upstream brought are a miss for U, configured or ad hoc: U must
serve them (the download is the proof; the file on disk stays one) before anyone reads them
through U. Otherwise a hostile upstream that answers 200 to every HEAD, or names any digest
in its manifests, would read whatever the mirror holds from other upstreams.

Blob and manifest reads, tag resolution, stale serving and the cluster's followers all ask
``Provenance``; nothing else decides. The facts (which upstream served what, which
repository links which digest) live in the index; decisions made here are remembered
(bounded, least recently used first out) so a hit costs no index query.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

from pullthrough.errors import BlobUnknown, ManifestUnknown, RegistryError
from pullthrough.manifest import upstream_accept
from pullthrough.store.hosted_index import HostedIndex, HostedManifest
from pullthrough.store.index import IndexBackend
from pullthrough.upstream.client import UpstreamClient

# Digests whose readers are remembered, and readers remembered per digest: attacker-chosen
# repository names must not grow this without end.
REMEMBERED_DIGESTS = 50_000
REMEMBERED_PER_DIGEST = 64


class Kind(enum.Enum):
    BLOB = "blob"
    MANIFEST = "manifest"


class Provenance:
    """Decides whether (upstream, repository) may read a stored digest, and records the
    facts that decide it."""

    def __init__(self, index: IndexBackend, hosted: HostedIndex | None = None) -> None:
        self._index = index
        self._hosted = hosted
        self._readers: OrderedDict[str, set[tuple[str, str]]] = OrderedDict()

    async def readable(
        self,
        upstream: UpstreamClient,
        repo: str,
        digest: str,
        kind: Kind,
        *,
        named: bool = False,
    ) -> bool:
        """Whether ``repo`` of ``upstream`` may read the stored ``digest``.

        False: ``upstream`` never served these bytes; the caller treats the digest as a
        miss and has the upstream serve it. Raises BlobUnknown / ManifestUnknown when the
        upstream, which did serve the bytes, says ``repo`` does not hold them (and
        UpstreamUnavailable when it cannot say). ``named``: the upstream has just named
        this digest for ``repo`` (a tag's HEAD), which counts as the HEAD of rule (c).
        """
        if self._remembered(upstream.name, repo, digest):
            return True
        if not await self._index.served_by(upstream.name, digest):
            return False
        if not await self._index.is_linked(upstream.name, repo, digest):
            if not named:
                await self.confirm(upstream, repo, digest, kind)
                return True
            await self._index.link(upstream.name, repo, digest)
        self._remember(upstream.name, repo, digest)
        return True

    async def recorded(self, upstream: str, repo: str, digest: str) -> bool:
        """Whether the index already says ``repo`` of ``upstream`` may read ``digest``,
        without asking the upstream (serving a cached tag while the upstream is down)."""
        if self._remembered(upstream, repo, digest):
            return True
        if await self._index.served_by(upstream, digest) and await self._index.is_linked(
            upstream, repo, digest
        ):
            self._remember(upstream, repo, digest)
            return True
        return False

    def followed(self, upstream: str, repo: str, digest: str) -> None:
        """Rule (a) as a cluster follower sees it: ``upstream``'s download of ``digest`` by
        another replica, for ``repo`` (or for a repository the upstream confirmed ``repo``
        alongside), was verified and renamed into place, and this replica served it to
        ``repo``'s clients. The owner writes the facts to the index, but only after its
        rename, so asking the index at once can miss them; remembering here is what lets
        this replica serve the blob again while Redis is down."""
        self._remember(upstream, repo, digest)

    async def confirm(self, upstream: UpstreamClient, repo: str, digest: str, kind: Kind) -> None:
        """Rule (c)'s HEAD: the upstream says ``repo`` holds ``digest``, or this raises.
        Also asked before a client of ``repo`` joins the upstream's download of ``digest``
        for another repository (the bytes come from that upstream and are verified before
        their last byte is served)."""
        if kind is Kind.BLOB:
            held = await upstream.head_blob(repo, digest) is not None
        else:
            held = await upstream.head_manifest(repo, digest, upstream_accept(())) is not None
        if not held:
            raise unknown(kind, upstream.name, repo, digest)
        await self._index.link(upstream.name, repo, digest)
        if await self._index.served_by(upstream.name, digest):
            self._remember(upstream.name, repo, digest)

    async def served(
        self,
        upstream: str,
        repo: str,
        digest: str,
        size: int,
        *,
        media_type: str | None = None,
        references: Iterable[str] = (),
    ) -> None:
        """Rule (a), and (b) for a manifest: ``upstream`` served ``digest`` for ``repo``,
        verified; ``references`` are what the manifest references through the fields its
        media type defines."""
        refs = tuple(references)
        await self._index.record(
            digest, size, media_type=media_type, upstream=upstream, repo=repo, children=refs
        )
        self._remember(upstream, repo, digest)

    async def referenced(
        self, upstream: str, repo: str, digest: str, references: Iterable[str]
    ) -> None:
        """Rule (b) for a stored manifest ``upstream`` named for ``repo`` (by a tag): what
        it references is ``repo``'s too, once ``upstream`` has served those bytes."""
        await self._index.link(upstream, repo, digest, children=references)

    # --- rule (d): hosted repositories ----------------------------------------------------

    async def pushed_blob(self, repo: str, digest: str) -> int | None:
        """Rule (d) for a blob: its size if it was pushed to (or mounted into) hosted
        ``repo``, verified; None otherwise."""
        if self._hosted is None:
            return None
        return await self._hosted.blob_size(repo, digest)

    async def pushed_manifest(self, repo: str, digest: str) -> HostedManifest | None:
        """Rule (d) for a manifest: its record if it was pushed to hosted ``repo``."""
        if self._hosted is None:
            return None
        return await self._hosted.manifest(repo, digest)

    async def not_pushed(
        self, repo: str, blobs: Iterable[str], manifests: Iterable[str]
    ) -> list[str]:
        """What of ``blobs`` and ``manifests`` (a pushed manifest's references) hosted
        ``repo`` may not read: a manifest can only name what its repository holds."""
        if self._hosted is None:
            return [*blobs, *manifests]
        missing = await self._hosted.missing_blobs(repo, blobs)
        return missing + await self._hosted.missing_manifests(repo, manifests)

    async def reached_through(
        self,
        upstream: str,
        repo: str,
        digest: str,
        *,
        tag_allowed: Callable[[str], bool],
        listed_by: Callable[[str, str], Awaitable[tuple[str, ...]]],
    ) -> bool:
        """Whether the index says a tag of ``repo`` that ``tag_allowed`` accepts reached
        the manifest ``digest``: the tag resolved to it, or to an index (or manifest list)
        whose ``manifests`` field lists it. ``listed_by(digest, media_type)`` gives the
        manifests a stored manifest lists (nothing for an image manifest). ``mirror.policy``
        asks this so that a pull by digest does not get around a tag it denies."""
        reached: list[tuple[str, str]] = []
        for tag in await self._index.tags(upstream, repo):
            if not tag_allowed(tag):
                continue
            for record in await self._index.tag(upstream, repo, tag):
                if record.digest == digest:
                    return True
                reached.append((record.digest, record.media_type))
        # Only then read stored indexes: most digests asked for are a tag's own resolution.
        for parent, media_type in reached:
            if digest in await listed_by(parent, media_type):
                return True
        return False

    def forget(self, digest: str) -> None:
        """The digest left the store: nothing remembered about it stands."""
        self._readers.pop(digest, None)

    def _remembered(self, upstream: str, repo: str, digest: str) -> bool:
        readers = self._readers.get(digest)
        if readers is None or (upstream, repo) not in readers:
            return False
        self._readers.move_to_end(digest)
        return True

    def _remember(self, upstream: str, repo: str, digest: str) -> None:
        readers = self._readers.get(digest)
        if readers is None:
            readers = self._readers[digest] = set()
            if len(self._readers) > REMEMBERED_DIGESTS:
                self._readers.popitem(last=False)
        elif len(readers) >= REMEMBERED_PER_DIGEST:
            readers.clear()
        readers.add((upstream, repo))
        self._readers.move_to_end(digest)


def unknown(kind: Kind, upstream: str, repo: str, digest: str) -> RegistryError:
    """The error a client gets for a digest ``repo`` of ``upstream`` does not hold."""
    if kind is Kind.BLOB:
        return BlobUnknown(
            f"blob {digest} is unknown to repository {repo} on upstream {upstream}",
            detail={"digest": digest},
        )
    return ManifestUnknown(
        f"manifest {digest} is unknown to repository {repo} on upstream {upstream}",
        detail={"name": repo, "digest": digest},
    )
