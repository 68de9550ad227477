"""Tag lists and the catalog.

Tag lists ask the upstream first (it knows tags the mirror never saw) and fall back to the
tags cached here when the upstream cannot answer. The catalog lists cached repositories
only: a mirror cannot enumerate Docker Hub, and should not try.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pullthrough.errors import NameUnknown, TooManyRequests, UpstreamUnavailable
from pullthrough.store.index import Index
from pullthrough.upstream.client import UpstreamClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    more: bool


def page(items: list[str], n: int | None, last: str | None) -> Page:
    """``items`` (sorted) after ``last`` (exclusive), at most ``n`` of them."""
    start = bisect.bisect_right(items, last) if last else 0
    rest = items[start:]
    if n is None:
        return Page(rest, False)
    return Page(rest[:n], len(rest) > n)


class Listing:
    def __init__(self, *, index: Index) -> None:
        self.index = index

    async def tags(
        self,
        upstream: UpstreamClient,
        repo: str,
        n: int | None,
        last: str | None,
        keep: Callable[[str], bool] | None = None,
    ) -> Page:
        """The repository's tags, paged; only those ``keep`` allows when given (a page may
        then hold fewer than ``n``, its Link still saying more follow)."""
        try:
            got = await upstream.tags(repo, n, last)
        except (UpstreamUnavailable, TooManyRequests) as exc:
            cached = await self.index.tags(upstream.name, repo)
            if not cached:
                raise
            log.warning("tag list of %s from cache (stale): %s", repo, exc)
            return page([t for t in cached if keep is None or keep(t)], n, last)
        if got is None:
            raise NameUnknown(
                f"repository {repo} is unknown to upstream {upstream.name}",
                detail={"name": repo},
            )
        tags, more = got
        if keep is not None:
            tags = [t for t in tags if keep(t)]
        # An upstream that ignores n or last (distribution 2.x lists every tag each time)
        # is paged here; one that honours them passes through, its Link saying if more follow.
        found = page(sorted(set(tags)), n, last)
        return Page(found.items, found.more or more)

    async def catalog(
        self,
        upstreams: list[tuple[UpstreamClient, str]],
        n: int | None,
        last: str | None,
        visible: Callable[[str, str], bool] | None = None,
        *,
        hosted: Sequence[str] = (),
    ) -> Page:
        """Cached repositories of each upstream, each name behind that upstream's prefix
        (the default upstream has none), and the ``hosted`` names (already filtered),
        merged in lexical order; only those ``visible`` (registry, repository) says, when
        given, filtered before paging."""
        names: list[str] = list(hosted)
        for upstream, prefix in upstreams:
            names.extend(
                prefix + repo
                for repo in await self.index.repositories(upstream.name)
                if visible is None or visible(upstream.name, repo)
            )
        return page(sorted(names), n, last)
