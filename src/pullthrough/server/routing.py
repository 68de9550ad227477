"""Which upstream a request is for, and the repository name it has there."""

from __future__ import annotations

from urllib.parse import urlsplit

from pullthrough.errors import NameUnknown
from pullthrough.mirror.service import Mirror
from pullthrough.reference import normalize_docker_hub, validate_name
from pullthrough.upstream.client import UpstreamClient

DOCKER_HUB_ALIASES = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})


def resolve(mirror: Mirror, raw_name: str, ns: str | None) -> tuple[UpstreamClient, str]:
    """The upstream client and repository for a request's name (raw, still URL-encoded)
    and its optional ``?ns=`` (the registry containerd says the request is for).

    A namespace naming a registry this mirror does not mirror is refused: fetching it from
    the default upstream instead would hand the client a different image.
    """
    name = validate_name(raw_name)  # percent-escapes never pass: names are [a-z0-9._/-]
    upstream = mirror.upstream
    if ns is not None and not _names_upstream(ns, upstream):
        raise NameUnknown(
            f"this mirror does not mirror registry {ns[:200]!r}; it mirrors "
            f"{upstream.name} ({upstream.base})",
            detail={"ns": ns[:200]},
        )
    if upstream.config.is_docker_hub:
        name = normalize_docker_hub(name)
    return upstream, name


def _names_upstream(ns: str, upstream: UpstreamClient) -> bool:
    """Whether a containerd ``ns`` means this upstream: its name, its URL's host, or, for
    Docker Hub, any of the names Docker Hub goes by."""
    ns = ns.strip().lower()
    names = {upstream.name.lower(), (urlsplit(upstream.base).netloc or "").lower()}
    if upstream.config.is_docker_hub:
        names |= DOCKER_HUB_ALIASES
    return ns in names
