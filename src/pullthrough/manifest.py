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
    """What to ask the upstream for: the client's types, or every type we know."""
    wanted = tuple(t for t in client_accept if t not in ("*/*",))
    return wanted or KNOWN_TYPES


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


@dataclass(frozen=True, slots=True)
class Children:
    """What a manifest points at: blobs (config and layers) and child manifests."""

    blobs: tuple[str, ...]
    manifests: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.blobs, *self.manifests)


def children(body: bytes) -> Children:
    """Digests referenced by a manifest or index; unparseable bodies reference nothing."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Children((), ())
    if not isinstance(doc, dict):
        return Children((), ())
    blobs: list[str] = []
    manifests: list[str] = []
    config = doc.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        blobs.append(config["digest"])
    for key, out in (("layers", blobs), ("blobs", blobs), ("manifests", manifests)):
        entries = doc.get(key)
        if isinstance(entries, list):
            out.extend(
                e["digest"]
                for e in entries
                if isinstance(e, dict) and isinstance(e.get("digest"), str)
            )
    return Children(tuple(blobs), tuple(manifests))
