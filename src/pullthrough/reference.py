"""Repository names, tags and digests: parsing and validation.

Every value that reaches the store or the upstream went through here, so a name or a
digest can never spell a path outside the storage root (no ``..``, no ``/`` in a digest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pullthrough.errors import DigestInvalid, NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-f0-9]+)$")

# distribution refuses names longer than this (repository plus host must fit 255).
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(text: str) -> Digest:
    """Parse ``algorithm:hex``; raises DigestInvalid for anything else or unsupported."""
    match = _DIGEST_RE.match(text)
    if not match:
        raise DigestInvalid(f"invalid digest {text[:200]!r}: expected algorithm:hex")
    algorithm, hexpart = match.groups()
    want = _DIGEST_HEX.get(algorithm)
    if want is None:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm!r} (use sha256 or sha512)")
    if len(hexpart) != want:
        raise DigestInvalid(f"invalid {algorithm} digest: expected {want} hex characters")
    return Digest(algorithm, hexpart)


def is_digest(reference: str) -> bool:
    """True when a manifest reference is meant as a digest (contains ``:``)."""
    return ":" in reference


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise NameInvalid."""
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        raise NameInvalid(f"invalid repository name {name[:300]!r}", detail={"name": name[:300]})
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise TagInvalid."""
    if not _TAG_RE.match(tag):
        raise TagInvalid(f"invalid tag {tag[:200]!r}", detail={"tag": tag[:200]})
    return tag


def normalize_docker_hub(name: str) -> str:
    """Docker Hub keeps official images under ``library/``: ``alpine`` is ``library/alpine``."""
    return name if "/" in name else f"library/{name}"
