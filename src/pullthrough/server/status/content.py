"""What is cached, for the status page: repositories and their tags, paged and searched,
only those the viewer may pull.

A tag's row is the row ``pullthrough ls`` prints for it (digest, image size as stored,
objects stored and missing, last access): the same ``Walker`` totals it; with it, how often
and when the tag was last pulled (``pullthrough.store.pulls``). Only the page
asked for is walked (its manifests read from the store, off the event loop), so a store of
10,000 repositories costs one index query and a page's worth of manifest reads. Untagged
manifests (``<none>`` in ``ls``) are not listed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pullthrough.mirror.service import Mirror
from pullthrough.store.hosted_inventory import read_inventory
from pullthrough.store.index import AgedBlob
from pullthrough.store.inventory import MAX_DEPTH, Walker, iso
from pullthrough.store.pulls import BY_DIGEST, Pulls


@dataclass(slots=True)
class Repository:
    upstream: str
    repository: str
    # (tag, digest) of every cached resolution, first seen first
    tags: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContentPage:
    total: int  # repositories matching the search that the viewer may pull
    rows: list[dict[str, Any]]


async def repositories(
    mirror: Mirror,
    *,
    may_pull: Callable[[str, str], bool],
    search: str,
    offset: int,
    limit: int,
) -> ContentPage:
    """Repositories (with their tags) whose ``upstream/repository`` contains ``search``
    (case-insensitive), in (upstream, repository) order, ``limit`` from ``offset``."""
    needle = search.lower()
    found: dict[tuple[str, str], Repository] = {}
    for upstream, repo, tag, digest, _size, _access in await mirror.index.catalog_rows():
        key = (upstream, repo)
        entry = found.get(key)
        if entry is None:
            if needle and needle not in f"{upstream}/{repo}".lower():
                continue
            if not may_pull(upstream, repo):
                continue
            entry = found[key] = Repository(upstream, repo)
        digests = entry.tags.setdefault(tag, [])
        if digest not in digests:
            digests.append(digest)
    ordered = [found[k] for k in sorted(found)]
    page = ordered[offset : offset + limit]
    if not page:
        return ContentPage(len(ordered), [])
    roots = {d for repo in page for digests in repo.tags.values() for d in digests}
    walker = await _walker_for(mirror, roots)
    pulls = await mirror.index.pulls((r.upstream, r.repository) for r in page)
    rows = [
        await _row(mirror, walker, repo, pulls.get((repo.upstream, repo.repository), {}))
        for repo in page
    ]
    return ContentPage(len(ordered), rows)


async def _walker_for(mirror: Mirror, roots: set[str]) -> Walker:
    """A ``Walker`` that knows every stored object the images at ``roots`` reach, and no
    other: what it totals for them is what ``ls`` (which knows every object) totals, at
    the cost of a page's objects instead of the whole index's."""
    objects: dict[str, AgedBlob] = {}
    walker = Walker(mirror.store, objects)  # reads ``objects`` as it grows
    frontier, depth = set(roots), 0
    while frontier and depth <= MAX_DEPTH:
        found = await mirror.index.objects(frontier)
        objects.update(found)
        reached: set[str] = set()
        for digest, record in found.items():
            if digest in roots or record.is_manifest:
                reached |= await walker.referenced(digest)
        frontier, depth = reached - objects.keys(), depth + 1
    return walker


async def _row(
    mirror: Mirror, walker: Walker, repo: Repository, pulls: dict[str, Pulls]
) -> dict[str, Any]:
    default = mirror.upstreams.default.name
    # How a client names it through this mirror: the default upstream's repositories
    # bare, every other one behind its upstream's path prefix.
    name = repo.repository if repo.upstream == default else f"{repo.upstream}/{repo.repository}"
    tags = []
    for tag in sorted(repo.tags):
        digests = repo.tags[tag]
        if len(digests) > 1:
            # As ``ls``: the resolution checked most recently leads.
            order = [r.digest for r in await mirror.index.tag(repo.upstream, repo.repository, tag)]
            digests.sort(key=lambda d: order.index(d) if d in order else len(order))
        image = await walker.image(digests[0])
        tags.append(
            {
                "tag": tag,
                "digest": digests[0],
                "media_type": image.media_type,
                "size": image.size,
                "objects": len(image.stored),
                "missing": len(image.missing),
                "last_access": iso(image.last_access),
                **_pull_figures(pulls.get(tag)),
            }
        )
    by_digest = pulls.get(BY_DIGEST)
    return {
        "upstream": repo.upstream,
        "repository": repo.repository,
        "name": name,
        "tags": tags,
        # Pulls by tag of every tag ever pulled (an evicted tag's too), and pulls by
        # digest (a multi-platform pull by tag is one of each: the index by tag, then its
        # platform's manifest by digest).
        "pulls": sum(p.count for t, p in pulls.items() if t != BY_DIGEST),
        "pulls_by_digest": by_digest.count if by_digest else 0,
        "last_pulled": iso(max((p.last for p in pulls.values()), default=None)),
    }


def _pull_figures(pulls: Pulls | None) -> dict[str, Any]:
    return {
        "pulls": pulls.count if pulls else 0,
        "last_pulled": iso(pulls.last) if pulls else None,
    }


async def hosted_repositories(
    mirror: Mirror,
    *,
    may_pull: Callable[[str, str], bool],
    search: str,
    offset: int,
    limit: int,
) -> ContentPage:
    """Hosted repositories whose name contains ``search`` (any case) and that the viewer
    may pull (a hosted name is the default registry's, as a pull of it is decided), each
    with its tags as ``pullthrough ls`` lists them; empty when nothing is hosted."""
    if mirror.hosted is None:
        return ContentPage(0, [])
    await mirror.hosted.index.current()  # replicas on a bucket: the latest copy first
    inventory = await asyncio.to_thread(read_inventory, mirror.hosted.index.path)
    registry = mirror.config.default_upstream
    needle = search.lower()
    found: dict[str, dict[str, Any]] = {}
    for usage in inventory.usage:
        name = usage.repository
        if name is None or (needle and needle not in name.lower()):
            continue
        if may_pull(registry, name):
            found[name] = {
                "repository": name,
                "objects": usage.objects,
                "bytes": usage.bytes,
                "tags": [],
            }
    for image in inventory.images:
        row = found.get(image.repository)
        if row is not None and image.tag is not None:
            row["tags"].append(
                {
                    "tag": image.tag,
                    "digest": image.digest,
                    "media_type": image.media_type,
                    "size": image.size,
                    "objects": image.objects,
                }
            )
    ordered = [found[name] for name in sorted(found)]
    return ContentPage(len(ordered), ordered[offset : offset + limit])
