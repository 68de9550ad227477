"""Which upstream a request is for, and the repository name it has there.

In this order: containerd's ``?ns=<registry>``; a first path component naming a configured
upstream (``/v2/ghcr.io/org/app/...``, podman's path-prefixed mirror); the default upstream.
A registry the mirror does not mirror is refused with NAME_UNKNOWN, never fetched from the
default upstream instead: that would hand the client a different image under that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pullthrough.errors import NameUnknown
from pullthrough.mirror.service import Mirror
from pullthrough.reference import normalize_docker_hub, validate_name
from pullthrough.upstream.client import UpstreamClient


@dataclass(frozen=True, slots=True)
class Route:
    upstream: UpstreamClient
    repo: str
    # The name client authorization decides on: the repository as the upstream knows it
    # (Docker Hub's ``library/`` added) for the default upstream, else prefixed with the
    # upstream's name (``ghcr.io/acme/app``), so a grant for one upstream's repository
    # never covers a namesake on another, however the client named it.
    scope: str


def resolve(mirror: Mirror, raw_name: str, ns: str | None) -> Route:
    """The upstream and repository for a request's name (raw from the path) and ``?ns=``."""
    name = validate_name(raw_name)  # percent-escapes never pass: names are [a-z0-9._/-]
    upstreams = mirror.upstreams
    if ns is not None:
        upstream = upstreams.for_namespace(ns)
        if upstream is None:
            raise NameUnknown(upstreams.how_to_add(ns), detail={"ns": ns[:200]})
    else:
        first, _, rest = name.partition("/")
        prefixed = upstreams.named(first) if rest else None
        if prefixed is not None:
            upstream, name = prefixed, rest
        elif rest and "." in first:
            # Reads as a registry host (Docker Hub namespaces have no dots).
            by_host = upstreams.for_namespace(first)
            if by_host is None:
                raise NameUnknown(upstreams.how_to_add(first), detail={"name": name})
            upstream, name = by_host, rest
        else:
            upstream = upstreams.default
    if upstream.config.is_docker_hub:
        name = normalize_docker_hub(name)
    scope = name if upstream is upstreams.default else f"{upstream.name}/{name}"
    return Route(upstream, name, scope)
