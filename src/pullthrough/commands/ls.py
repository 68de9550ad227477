"""``pullthrough ls [CONFIG] [--json]``: the cached images, one line per tag.

Each tag line gives the manifest digest the tag points at, the size of the image as stored
(the manifest plus every stored object it references: for an index, its platform manifests
and their blobs too; a layer shared by two platforms counts once), how many of the objects
it references are stored (an index warmed for one platform is partial), and when any of
them was last read, and whether a pin keeps it (``mirror.pins``, ``pullthrough pin``).
Manifests of a repository that no tag reaches (pulled by digest, or a
tag's earlier target) are listed with tag ``<none>``; a repository that holds blobs but no
manifest at all gets one line with digest ``-``.

Hosted repositories (``mirror.hosted``) are listed apart, after the cache: what they hold
is pushed and kept, not cached (``"hosted"`` in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pullthrough.commands.offline import has_index, hosted_copy, open_store
from pullthrough.config import Config
from pullthrough.mirror.pins import all_pins, pinned_digests
from pullthrough.progress import human
from pullthrough.store.hosted_inventory import EMPTY, HostedInventory, read_inventory
from pullthrough.store.inventory import (
    Walker,
    iso,
    stored_objects,
    table,
)


@dataclass
class Row:
    upstream: str
    repository: str
    tag: str | None
    digest: str | None
    media_type: str | None
    size: int
    stored: int
    missing: int
    last_access: float
    # The same tag resolved to other manifests for clients accepting other media types.
    other_digests: list[str] = field(default_factory=list)
    pinned: bool = False  # kept for good: eviction never removes it

    def as_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "objects": self.stored,
            "missing": self.missing,
            "last_access": iso(self.last_access),
            "other_digests": self.other_digests,
            "pinned": self.pinned,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(config: Config, args: argparse.Namespace) -> int:
    rows = asyncio.run(collect(config))
    hosted = _hosted(config)
    if args.json:
        doc: dict[str, Any] = {"images": [row.as_json() for row in rows]}
        if config.hosted is not None:
            doc["hosted"] = [asdict(image) for image in hosted.images]
        print(json.dumps(doc, indent=2))
        return 0
    if not rows:
        print(f"nothing cached in {config.root}")
    else:
        _print_cached(rows)
    if config.hosted is not None:
        _print_hosted(hosted)
    return 0


def _hosted(config: Config) -> HostedInventory:
    # Pushed content, listed apart: it is kept, not cached (``mirror.hosted``).
    if config.hosted is None:
        return EMPTY
    if config.cluster is not None and config.s3 is not None:
        return asyncio.run(_shared_hosted(config))  # replicas on a bucket: theirs
    return read_inventory(config.root / "hosted.db")


async def _shared_hosted(config: Config) -> HostedInventory:
    async with open_store(config) as opened, hosted_copy(opened) as hosted_db:
        return await asyncio.to_thread(read_inventory, hosted_db)


def _print_hosted(hosted: HostedInventory) -> None:
    if not hosted.images:
        print("\nhosted: nothing pushed")
        return
    lines = [["HOSTED REPOSITORY", "TAG", "DIGEST", "SIZE", "OBJECTS"]]
    for image in hosted.images:
        lines.append(
            [
                image.repository,
                image.tag if image.tag is not None else "<none>",
                image.digest,
                human(image.size),
                str(image.objects),
            ]
        )
    print()
    print("\n".join(table(lines)))


def _print_cached(rows: list[Row]) -> None:
    lines = [
        ["UPSTREAM", "REPOSITORY", "TAG", "DIGEST", "SIZE", "OBJECTS", "LAST ACCESS", "PINNED"]
    ]
    for row in rows:
        lines.append(
            [
                row.upstream,
                row.repository,
                row.tag if row.tag is not None else "<none>",
                row.digest or "-",
                human(row.size),
                f"{row.stored}/{row.stored + row.missing}",
                iso(row.last_access) or "-",
                "pinned" if row.pinned else "",
            ]
        )
    print("\n".join(table(lines)))


async def collect(config: Config) -> list[Row]:
    """Every tag, untagged manifest and manifest-less repository in the store."""
    if not has_index(config):
        return []  # nothing was ever stored; do not create an index just to say so
    async with open_store(config) as opened:
        index = opened.index
        objects = await stored_objects(index)
        links = await index.repository_links()
        walker = Walker(opened.store, objects)

        tagged: dict[tuple[str, str, str], list[str]] = {}
        for upstream, repo, tag, digest, _size, _access in await index.catalog_rows():
            digests = tagged.setdefault((upstream, repo, tag), [])
            if digest not in digests:
                digests.append(digest)

        rows: list[Row] = []
        reached: dict[tuple[str, str], set[str]] = {}
        for (upstream, repo, tag), digests in tagged.items():
            if len(digests) > 1:
                # One row per tag: the resolution checked most recently leads.
                order = [r.digest for r in await index.tag(upstream, repo, tag)]
                digests.sort(key=lambda d: order.index(d) if d in order else len(order))
            seen = reached.setdefault((upstream, repo), set())
            for digest in digests:
                image = await walker.image(digest)
                seen |= image.stored | image.missing
            image = await walker.image(digests[0])
            rows.append(
                Row(
                    upstream,
                    repo,
                    tag,
                    digests[0],
                    image.media_type,
                    image.size,
                    len(image.stored),
                    len(image.missing),
                    image.last_access,
                    digests[1:],
                )
            )

        for (upstream, repo), all_linked in links.items():
            # A running server may have stored (or evicted) something between the queries.
            linked = {d for d in all_linked if d in objects}
            if not linked:
                continue
            seen = reached.get((upstream, repo), set())
            manifests = {d for d in linked if objects[d].is_manifest}
            referenced: set[str] = set()
            for digest in manifests:
                referenced |= await walker.referenced(digest)
            for root in sorted(manifests - referenced - seen):
                image = await walker.image(root)
                rows.append(
                    Row(
                        upstream,
                        repo,
                        None,
                        root,
                        image.media_type,
                        image.size,
                        len(image.stored),
                        len(image.missing),
                        image.last_access,
                    )
                )
            if not seen and not manifests:
                rows.append(
                    Row(
                        upstream,
                        repo,
                        None,
                        None,
                        None,
                        sum(objects[d].size for d in linked),
                        len(linked),
                        0,
                        max(objects[d].last_access for d in linked),
                    )
                )
        pins = await all_pins(config.pins, index)
        if pins:
            kept = await pinned_digests(pins, index=index, store=opened.store)
            for row in rows:
                row.pinned = row.digest in kept
    rows.sort(key=lambda r: (r.upstream, r.repository, r.tag is None, r.tag or "", r.digest or ""))
    return rows
