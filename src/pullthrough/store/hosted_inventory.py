"""What hosted repositories hold, for ``ls`` and ``du``: read from ``hosted.db`` alone.

Hosted content is listed apart from the cache: it is kept until deleted and collected,
never evicted, and exists nowhere else. Read-only and blocking (an offline command runs
it in a thread); safe beside a serving mirror (WAL).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pullthrough.store.hosted_index import connect

# An index of indexes is legal; deeper nesting than this is a loop or garbage.
MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class HostedImage:
    """A tagged manifest, or one nothing in its repository tags or lists (``tag`` None),
    with everything it references that the repository holds."""

    repository: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    objects: int


@dataclass(frozen=True, slots=True)
class HostedUsage:
    repository: str | None  # None: all hosted repositories, each object once
    objects: int
    bytes: int


@dataclass(frozen=True, slots=True)
class HostedInventory:
    images: list[HostedImage]
    usage: list[HostedUsage]
    total: HostedUsage
    digests: frozenset[str]


EMPTY = HostedInventory([], [], HostedUsage(None, 0, 0), frozenset())


def read_inventory(path: Path) -> HostedInventory:
    """Everything ``hosted.db`` at ``path`` records; empty when there is none."""
    if not path.is_file():
        return EMPTY
    db = connect(path)
    try:
        return _inventory(db)
    finally:
        db.close()


def _inventory(db: sqlite3.Connection) -> HostedInventory:
    sizes: dict[tuple[str, str], int] = {}
    for repo, digest, size in db.execute("SELECT repo, digest, size FROM hosted_blobs"):
        sizes[(repo, digest)] = int(size)
    types: dict[tuple[str, str], str] = {}
    for repo, digest, media_type, size in db.execute(
        "SELECT repo, digest, media_type, size FROM hosted_manifests"
    ):
        sizes[(repo, digest)] = int(size)
        types[(repo, digest)] = str(media_type)
    kids: dict[tuple[str, str], list[str]] = {}
    for repo, manifest, child in db.execute("SELECT repo, manifest, child FROM hosted_children"):
        kids.setdefault((repo, manifest), []).append(str(child))

    def reached(repo: str, digest: str) -> set[str]:
        seen: set[str] = set()
        todo = [(digest, 0)]
        while todo:
            current, depth = todo.pop()
            if current in seen or (repo, current) not in sizes or depth > MAX_DEPTH:
                continue
            seen.add(current)
            todo.extend((c, depth + 1) for c in kids.get((repo, current), ()))
        return seen

    def image(repo: str, tag: str | None, digest: str) -> HostedImage:
        held = reached(repo, digest)
        return HostedImage(
            repo,
            tag,
            digest,
            types[(repo, digest)],
            sum(sizes[(repo, d)] for d in held),
            len(held),
        )

    images: list[HostedImage] = []
    tagged: set[tuple[str, str]] = set()
    for repo, tag, digest in db.execute(
        "SELECT repo, tag, digest FROM hosted_tags ORDER BY repo, tag"
    ):
        if (repo, digest) in types:
            images.append(image(repo, tag, digest))
            tagged.add((repo, digest))
    listed = {(repo, c) for (repo, _), children in kids.items() for c in children}
    for repo, digest in sorted(types.keys() - tagged - listed):
        images.append(image(repo, None, digest))

    per_repo: dict[str, list[int]] = {}
    every: dict[str, int] = {}
    for (repo, digest), size in sorted(sizes.items()):
        usage = per_repo.setdefault(repo, [0, 0])
        usage[0] += 1
        usage[1] += size
        every[digest] = size
    images.sort(key=lambda i: (i.repository, i.tag is None, i.tag or "", i.digest))
    return HostedInventory(
        images,
        [HostedUsage(repo, n, b) for repo, (n, b) in sorted(per_repo.items())],
        HostedUsage(None, len(every), sum(every.values())),
        frozenset(every),
    )
