"""Which upstream a request is for, and the repository name it has there.

In this order: containerd's ``?ns=<registry>``; a first path component naming a configured
upstream (``/v2/ghcr.io/org/app/...``, podman's path-prefixed mirror); the default upstream.
A registry the mirror does not mirror is refused with NAME_UNKNOWN, never fetched from the
default upstream instead: that would hand the client a different image under that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pullthrough.config import UpstreamConfig
from pullthrough.errors import NameUnknown
from pullthrough.mirror.route import Route
from pullthrough.mirror.service import Mirror
from pullthrough.reference import normalize_docker_hub, validate_name


@dataclass(frozen=True, slots=True)
class Target:
    """What a request names, decided without making anything (so it can be decided
    before the client is authorized): the upstream (configured, or an ad-hoc one a client
    named, whose client is not made yet) and the repository there."""

    upstream: UpstreamConfig
    repo: str
    # The name client authorization decides on: the repository as the upstream knows it
    # (Docker Hub's ``library/`` added) for the default upstream, else prefixed with the
    # upstream's name (``ghcr.io/acme/app``), so a grant for one upstream's repository
    # never covers a namesake on another, however the client named it.
    scope: str


def target(mirror: Mirror, raw_name: str, ns: str | None) -> Target:
    """The upstream and repository for a request's name (raw from the path) and ``?ns=``.
    Makes no ad-hoc upstream: an unauthenticated client must not fill the slots."""
    name = validate_name(raw_name)  # percent-escapes never pass: names are [a-z0-9._/-]
    upstreams = mirror.upstreams
    default = upstreams.default.config
    upstream: UpstreamConfig | None
    if ns is not None:
        upstream = upstreams.config_for(ns)
        if upstream is None:
            raise NameUnknown(upstreams.how_to_add(ns), detail={"ns": ns[:200]})
    else:
        first, _, rest = name.partition("/")
        prefixed = upstreams.named(first) if rest else None
        if prefixed is not None:
            upstream, name = prefixed.config, rest
        elif rest and "." in first:
            # Reads as a registry host (Docker Hub namespaces have no dots).
            upstream = upstreams.config_for(first)
            if upstream is None:
                raise NameUnknown(upstreams.how_to_add(first), detail={"name": name})
            name = rest
        else:
            upstream = default
    if upstream.is_docker_hub:
        name = normalize_docker_hub(name)
    scope = name if upstream is default else f"{upstream.name}/{name}"
    return Target(upstream, name, scope)


def route(mirror: Mirror, found: Target) -> Route:
    """The client for an authorized ``Target``: an ad-hoc upstream's slot is taken here.
    NAME_UNKNOWN when every ad-hoc slot is busy."""
    client = mirror.upstreams.client_for(found.upstream)
    if client is None:
        name = found.upstream.name
        raise NameUnknown(mirror.upstreams.how_to_add(name), detail={"ns": name[:200]})
    return Route(client, found.repo, found.scope)


def resolve(mirror: Mirror, raw_name: str, ns: str | None) -> Route:
    """``route(target(...))`` at once, for callers with nobody to authorize (``warm``)."""
    return route(mirror, target(mirror, raw_name, ns))
