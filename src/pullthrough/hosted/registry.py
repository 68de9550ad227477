"""Hosted repositories: what clients push is checked, stored and kept, never evicted.

Reads of a hosted repository ask ``mirror.provenance`` whether the repository holds the
digest (rule (d) of "Who may read a digest": pushed to R and verified); bytes are shared
with the mirror's store by digest, the right to read them is not: a digest another
repository or an upstream brought is unknown here until it is pushed (or mounted) to this
repository. ``HostedIndex`` records the facts; the decision is provenance's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pullthrough.config import HostedConfig
from pullthrough.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestRejected,
    ManifestUnknown,
    NameUnknown,
    Unsupported,
)
from pullthrough.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_TYPES,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from pullthrough.mirror.blobs import BlobBody
from pullthrough.mirror.provenance import Provenance
from pullthrough.reference import Digest, parse_digest
from pullthrough.store.blobs import BlobStore, DigestMismatch
from pullthrough.store.hosted_index import ChildGone, HostedIndex, HostedManifest

log = logging.getLogger(__name__)

PUSHABLE_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST})
# Layers a registry need not hold (their bytes live elsewhere, named by ``urls``).
_FOREIGN_LAYERS = (
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
)


@dataclass(frozen=True, slots=True)
class Pushed:
    """A manifest as stored: its digest, and the subject it names (for ``OCI-Subject``)."""

    digest: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class _Parsed:
    media_type: str
    blobs: tuple[str, ...]
    manifests: tuple[str, ...]
    subject: str | None
    artifact_type: str | None
    annotations: dict[str, Any] | None


# A blob read from the bucket (storage.s3) when the local cache no longer has it: a
# presigned URL or the bucket's bytes streamed, as for a cached blob (repo, digest, size).
RemoteRead = Callable[[str, Digest, int], Awaitable[BlobBody]]


class HostedRegistry:
    """With storage.s3 (``store.bucket``), a pushed blob is in the bucket before the push
    is acknowledged, and the local store is a cache of it; ``remote`` reads what that
    cache lacks, and ``saved`` puts the hosted index's copy into the bucket once a
    manifest, a tag or a deletion changed it (before the client hears of it)."""

    def __init__(
        self,
        *,
        config: HostedConfig,
        store: BlobStore,
        index: HostedIndex,
        provenance: Provenance,
        remote: RemoteRead | None = None,
        saved: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.provenance = provenance
        self.remote = remote
        self.saved = saved
        # Digests hosted repositories hold, for eviction (a sync check per candidate):
        # added on push, dropped only at start-up (a deleted digest stays protected until
        # then; gc decides, not the sweeper).
        self.kept: set[str] = set()
        # Pushed blobs on their way into the bucket: their local file must stay till then.
        self.uploading: set[str] = set()

    async def start(self) -> None:
        await self.index.open()
        self.kept = await self.index.digests()

    def holds(self, name: str) -> bool:
        return self.config.holds(name)

    # --- blobs --------------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: Digest) -> int:
        """The size of a blob ``repo`` holds whose file is stored; BLOB_UNKNOWN otherwise."""
        size = await self.provenance.pushed_blob(repo, str(digest))
        if size is None or not await self._stored(digest):
            raise BlobUnknown(
                f"blob {digest} is unknown to repository {repo}", detail={"digest": str(digest)}
            )
        return size

    async def open_blob(self, repo: str, digest: Digest) -> BlobBody:
        """A blob ``repo`` holds, for a GET: its open local file, which the caller sends
        through the read check (``server.transfer``) as for the cache, or with storage.s3
        the bucket's copy; BLOB_UNKNOWN otherwise."""
        size = await self.provenance.pushed_blob(repo, str(digest))
        opened = await self.store.open(digest) if size is not None else None
        if opened is not None:
            return BlobBody(digest, opened.size, cached=opened)
        if size is None or self.remote is None:
            raise BlobUnknown(
                f"blob {digest} is unknown to repository {repo}", detail={"digest": str(digest)}
            )
        return await self.remote(repo, digest, size)

    async def _stored(self, digest: Digest) -> bool:
        # With a bucket, a blob is recorded only once the bucket has it (blob_pushed).
        return self.store.bucket is not None or await self.store.exists(digest)

    async def blob_pushed(self, repo: str, digest: Digest, size: int) -> None:
        """Record a verified blob, now in the local store, as held by ``repo``; with
        storage.s3 after it is in the bucket (BucketUnavailable otherwise: the push fails
        and may be repeated)."""
        self.kept.add(str(digest))
        bucket = self.store.bucket
        if bucket is not None and not await self.index.held({str(digest)}):
            self.uploading.add(str(digest))
            try:
                await bucket.upload(digest, self.store.path_for(digest), size)
            finally:
                self.uploading.discard(str(digest))
        await self.index.add_blob(repo, str(digest), size)

    async def mount(self, repo: str, digest: Digest, source: str) -> int | None:
        """Link ``source``'s blob into ``repo``; None when ``source`` does not hold it (the
        caller has checked that the pusher may read ``source``)."""
        size = await self.provenance.pushed_blob(source, str(digest))
        if size is None or not await self._stored(digest):
            return None
        self.kept.add(str(digest))
        await self.index.add_blob(repo, str(digest), size)
        return size

    async def delete_blob(self, repo: str, digest: Digest) -> None:
        self._deletes_allowed()
        if not await self.index.delete_blob(repo, str(digest)):
            raise BlobUnknown(
                f"blob {digest} is unknown to repository {repo}", detail={"digest": str(digest)}
            )
        await self._save()

    # --- manifests ----------------------------------------------------------------------

    async def put_manifest(
        self, repo: str, reference: str, body: bytes, content_type: str | None
    ) -> Pushed:
        """Check and store a pushed manifest under ``reference`` (a tag or its digest):
        it must parse as its type says, its type be one the registry serves, and everything
        it references through the fields its type defines be held by ``repo``."""
        expected = parse_digest(reference) if ":" in reference else None
        algorithm = expected.algorithm if expected else "sha256"
        actual = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
        if expected is not None and actual != expected:
            raise DigestInvalid(
                f"the manifest's digest is {actual}, not {expected}; it was not stored",
                detail={"digest": str(expected)},
            )
        parsed = await asyncio.to_thread(_parse, body, content_type)
        missing = await self.provenance.not_pushed(repo, parsed.blobs, parsed.manifests)
        if missing:
            raise ManifestBlobUnknown(
                f"the manifest references {missing[0]}, which repository {repo} does not hold "
                "(push blobs and child manifests first)",
                detail={"digest": missing[0]},
            )
        await self.store.put(actual, body)
        self.kept.add(str(actual))
        try:
            await self.index.add_manifest(
                repo,
                HostedManifest(
                    str(actual),
                    parsed.media_type,
                    len(body),
                    parsed.artifact_type,
                    parsed.annotations,
                ),
                subject=parsed.subject,
                children=(*parsed.blobs, *parsed.manifests),
                tag=None if expected else reference,
            )
        except ChildGone as exc:
            raise ManifestBlobUnknown(
                f"the manifest references {exc.digest}, which repository {repo} no longer "
                "holds (removed while the manifest was pushed; push it again)",
                detail={"digest": exc.digest},
            ) from exc
        if self.store.bucket is None and not await self.store.exists(actual):
            # Swept between being stored and being recorded (the same bytes cached for a
            # mirrored name, expiring); recorded now, so it stays once put back. (In a
            # bucket, eviction's deletes ask the hosted index first.)
            log.warning("%s was swept while it was pushed: put back", actual)
            await self.store.put(actual, body)
        await self._save()
        return Pushed(str(actual), parsed.subject)

    async def manifest(self, repo: str, reference: str) -> tuple[HostedManifest, bytes]:
        """The manifest a tag or digest names in ``repo``, read and verified."""
        digest = reference if ":" in reference else await self.index.tag(repo, reference)
        record = await self.provenance.pushed_manifest(repo, digest) if digest else None
        body = None
        if record is not None:
            try:
                body = await self.store.read_verified(parse_digest(record.digest))
            except DigestMismatch:
                # No upstream to fetch it from again: the push must be repeated. Said in
                # the log; the client gets an unknown manifest, never the wrong bytes.
                log.error("hosted manifest %s of %s no longer matches its digest", digest, repo)
        if record is None or body is None:
            raise ManifestUnknown(
                f"manifest {repo}:{reference} is unknown",
                detail={"name": repo, "reference": reference},
            )
        return record, body

    async def delete_manifest(self, repo: str, reference: str) -> None:
        """By digest: the manifest and its tags; by tag: that tag only."""
        self._deletes_allowed()
        if ":" in reference:
            gone = await self.index.delete_manifest(repo, str(parse_digest(reference)))
        else:
            gone = await self.index.delete_tag(repo, reference)
        if not gone:
            raise ManifestUnknown(
                f"manifest {repo}:{reference} is unknown",
                detail={"name": repo, "reference": reference},
            )
        await self._save()

    async def repositories(self) -> list[str]:
        """The hosted repositories that hold anything, sorted (for ``/v2/_catalog``)."""
        return await self.index.repositories()

    async def tags(self, repo: str) -> list[str]:
        found = await self.index.tags(repo)
        if found is None:
            raise NameUnknown(f"repository {repo} is unknown", detail={"name": repo})
        return found

    async def referrers(
        self, repo: str, subject: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests in ``repo`` whose subject is ``subject``, only those
        of ``artifact_type`` when given."""
        out = []
        for found in await self.index.referrers(repo, str(subject)):
            if artifact_type is not None and found.artifact_type != artifact_type:
                continue
            descriptor: dict[str, Any] = {
                "mediaType": found.media_type,
                "digest": found.digest,
                "size": found.size,
            }
            if found.artifact_type:
                descriptor["artifactType"] = found.artifact_type
            if found.annotations:
                descriptor["annotations"] = found.annotations
            out.append(descriptor)
        return out

    async def _save(self) -> None:
        if self.saved is not None:
            await self.saved()

    def _deletes_allowed(self) -> None:
        if not self.config.delete_enabled:
            raise Unsupported(
                "deleting is disabled on this registry (storage.delete.enabled: false)"
            )


def _parse(body: bytes, content_type: str | None) -> _Parsed:
    """What a pushed manifest says, or ManifestRejected naming why it cannot be stored."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ManifestRejected("the manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ManifestRejected("the manifest must be a JSON object with schemaVersion 2")
    declared = doc.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip().lower() or None
    if declared is not None and not isinstance(declared, str):
        raise ManifestRejected("mediaType must be a string")
    if declared and header and declared != header:
        raise ManifestRejected(f"the manifest says it is {declared} but was sent as {header}")
    media_type = declared or header
    if media_type not in PUSHABLE_TYPES:
        raise ManifestRejected(
            f"media type {str(media_type)[:200]!r} is not a manifest type this registry "
            f"stores ({', '.join(sorted(PUSHABLE_TYPES))})"
        )
    blobs: list[str] = []
    manifests: list[str] = []
    if media_type in IMAGE_TYPES:
        config = doc.get("config")
        if not isinstance(config, dict):
            raise ManifestRejected("an image manifest needs a config descriptor")
        blobs.append(_descriptor_digest(config, "config"))
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise ManifestRejected("layers must be a list")
        for i, layer in enumerate(layers):
            digest = _descriptor_digest(layer, f"layers[{i}]")
            kind = layer.get("mediaType", "")
            if isinstance(kind, str) and kind.startswith(_FOREIGN_LAYERS):
                continue
            blobs.append(digest)
        artifact = doc.get("artifactType")
        if not isinstance(artifact, str) or not artifact:
            artifact = config.get("mediaType")
    else:
        assert media_type in INDEX_TYPES
        entries = doc.get("manifests", [])
        if not isinstance(entries, list):
            raise ManifestRejected("manifests must be a list")
        manifests = [_descriptor_digest(e, f"manifests[{i}]") for i, e in enumerate(entries)]
        artifact = doc.get("artifactType")
    subject = None
    if doc.get("subject") is not None:
        subject = _descriptor_digest(doc["subject"], "subject")
    annotations = doc.get("annotations")
    return _Parsed(
        media_type=media_type,
        blobs=tuple(blobs),
        manifests=tuple(manifests),
        subject=subject,
        artifact_type=artifact if isinstance(artifact, str) and artifact else None,
        annotations=annotations if isinstance(annotations, dict) and annotations else None,
    )


def _descriptor_digest(entry: object, where: str) -> str:
    if not isinstance(entry, dict):
        raise ManifestRejected(f"{where} must be a descriptor (a JSON object)")
    try:
        digest = parse_digest(str(entry.get("digest", "")))
    except DigestInvalid:
        raise ManifestRejected(f"{where} has no valid digest") from None
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestRejected(f"{where} has no valid size")
    return str(digest)
