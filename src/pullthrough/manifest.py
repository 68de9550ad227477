"""Manifest media types, Accept negotiation and the children a manifest references."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
KNOWN_TYPES: tuple[str, ...] = (
    OCI_INDEX,
    DOCKER_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
)

# distribution caps manifests at 4 MiB; a larger body is not a manifest we will keep.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def parse_accept(header_values: Iterable[str]) -> tuple[str, ...]:
    """Every media type named in every ``Accept`` line, in order, without parameters.

    Docker and podman send one media type per header line; reading only the first line
    would make the mirror answer with a type the client cannot parse.
    """
    seen: dict[str, None] = {}
    for value in header_values:
        for part in value.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type:
                seen.setdefault(media_type, None)
    return tuple(seen)


def upstream_accept(client_accept: tuple[str, ...]) -> tuple[str, ...]:
    """What to ask the upstream for: every type the mirror can store, after any others the
    client named (an old client's schema 1, say).

    Never the client's list alone: an upstream holding a Docker schema 2 manifest answers 404
    to an Accept of OCI types only, though the tag exists and the mirror can serve it. The
    mirror negotiates with its client itself (``preferred``)."""
    extra = tuple(t for t in client_accept if t != "*/*" and t not in KNOWN_TYPES)
    return (*extra, *KNOWN_TYPES)


def acceptable(media_type: str, client_accept: tuple[str, ...]) -> bool:
    """Whether a cached manifest of ``media_type`` may answer a client sending ``client_accept``."""
    if not client_accept or "*/*" in client_accept:
        return True
    return media_type in client_accept


def detect_media_type(body: bytes, header_type: str | None) -> str:
    """The manifest's own ``mediaType`` field, else the upstream's Content-Type."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if doc.get("schemaVersion") == 1:
            return DOCKER_SCHEMA1_SIGNED if "signatures" in doc else DOCKER_SCHEMA1
    return (header_type or OCI_MANIFEST).split(";", 1)[0].strip()


class NotAManifest(ValueError):
    """Bytes that cannot be a manifest (an HTML error page served with status 200, say)."""


def check_manifest(body: bytes, header_type: str | None) -> str:
    """The media type of a manifest body; raises NotAManifest for anything that is not a
    JSON object with a ``schemaVersion``, or whose type is not JSON-based."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotAManifest("the body is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("schemaVersion"), int):
        raise NotAManifest("the body has no schemaVersion")
    media_type = detect_media_type(body, header_type)
    if not (
        media_type.endswith("+json")
        or media_type.endswith("+prettyjws")
        or media_type == "application/json"
    ):
        raise NotAManifest(f"media type {media_type!r} is not a manifest type")
    return media_type


IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})


@dataclass(frozen=True, slots=True)
class Children:
    """What a manifest points at: blobs (config and layers) and child manifests."""

    blobs: tuple[str, ...]
    manifests: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.blobs, *self.manifests)


NO_CHILDREN = Children((), ())


def children(body: bytes, media_type: str | None = None) -> Children:
    """Digests a manifest references through the fields its media type defines: an image
    manifest's ``config`` and ``layers``, an index's (or manifest list's) ``manifests``;
    nothing else (not ``blobs``, not ``subject``, not ``manifests`` inside an image
    manifest), and nothing for other types or unparseable bodies. What a manifest names
    here becomes readable with it (``mirror.provenance``), so a field no spec defines for
    the type must not count. ``media_type`` is the manifest's as checked on arrival; without
    it the body's own ``mediaType`` decides, or failing that its shape (operator commands
    reading the store)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return NO_CHILDREN
    if not isinstance(doc, dict):
        return NO_CHILDREN
    kind = media_type or doc.get("mediaType")
    if not kind:
        kind = OCI_INDEX if "manifests" in doc and "layers" not in doc else OCI_MANIFEST
    if kind in INDEX_TYPES:
        return Children((), _digests(doc.get("manifests")))
    if kind in IMAGE_TYPES:
        config = doc.get("config")
        found = _digests([config]) if isinstance(config, dict) else ()
        return Children((*found, *_digests(doc.get("layers"))), ())
    return NO_CHILDREN


def _digests(entries: object) -> tuple[str, ...]:
    if not isinstance(entries, list):
        return ()
    return tuple(
        e["digest"] for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)
    )
