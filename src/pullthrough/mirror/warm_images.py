"""What ``pullthrough warm`` walks: image references and platforms as the user writes them,
manifests as fetched, and the objects they reference."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from pullthrough.manifest import INDEX_TYPES
from pullthrough.reference import (
    Digest,
    parse_digest,
    validate_name,
    validate_tag,
)

# Layers a registry is not allowed to hand out (Windows base layers): clients fetch them
# from the URLs in the descriptor, never from the registry, so neither do we.
NON_DISTRIBUTABLE = ("foreign", "nondistributable")


class WarmError(Exception):
    """A failure as the user sees it: an OCI error code and its message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- image references and platforms --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRef:
    text: str  # as the user wrote it
    registry: str | None  # the registry host the reference names; None: the default upstream
    name: str  # the repository path on that registry
    tag: str | None
    digest: Digest | None

    @property
    def reference(self) -> str:
        """What to ask for: the digest when pinned (a tag next to it is only a label)."""
        return str(self.digest) if self.digest else (self.tag or "latest")


def parse_image(text: str) -> ImageRef:
    """Parse an image reference the way docker does; raises RegistryError (NAME_INVALID,
    TAG_INVALID, DIGEST_INVALID) for anything malformed."""
    rest, at, digest_text = text.partition("@")
    digest = parse_digest(digest_text) if at else None
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a colon before the last slash is a registry's port
        rest, tag = rest[:colon], validate_tag(rest[colon + 1 :])
    from pullthrough.mirror.upstreams import DOCKER_HUB_ALIASES

    registry: str | None = None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first.lower(), remainder
        if registry in DOCKER_HUB_ALIASES:
            registry = "docker.io"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(text, registry, validate_name(rest), tag, digest)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, entry: Any) -> bool:
        if not isinstance(entry, dict):
            return False
        return (
            entry.get("os") == self.os
            and entry.get("architecture") == self.architecture
            and (self.variant is None or entry.get("variant") == self.variant)
        )


def parse_platform(text: str) -> Platform:
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(f"expected OS/ARCH[/VARIANT] (linux/arm64), got {text!r}")
    return Platform(*parts)


# --- manifests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Got:
    """A manifest as received, its digest checked."""

    digest: str
    media_type: str
    body: bytes
    stale: bool = False  # direct warming: the upstream could not be asked, the cache answered

    def document(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WarmError("MANIFEST_INVALID", f"manifest {self.digest} is not JSON") from exc
        if not isinstance(doc, dict):
            raise WarmError("MANIFEST_INVALID", f"manifest {self.digest} is not a JSON object")
        return doc

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or "manifests" in self.document()


def child_manifests(got: Got) -> list[tuple[str, Any]]:
    """(digest, platform) of each entry of an index."""
    entries = got.document().get("manifests")
    if not isinstance(entries, list):
        return []
    return [
        (e["digest"], e.get("platform"))
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("digest"), str)
    ]


def blob_descriptors(got: Got) -> list[tuple[str, int | None]]:
    """(digest, size) of an image manifest's config, layers and (artifact) blobs: the same
    set as ``pullthrough.manifest.children`` plus sizes, minus non-distributable layers."""
    doc = got.document()
    found: list[tuple[str, int | None]] = []
    entries: list[Any] = [doc.get("config")]
    for key in ("layers", "blobs"):
        value = doc.get(key)
        if isinstance(value, list):
            entries.extend(value)
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        media_type = str(entry.get("mediaType", ""))
        if any(word in media_type for word in NON_DISTRIBUTABLE):
            continue
        size = entry.get("size")
        found.append((entry["digest"], size if isinstance(size, int) and size >= 0 else None))
    return found


# --- where the bytes come from -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pulled:
    size: int
    cached: bool = False  # direct warming found it stored already
