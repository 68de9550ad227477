"""Pull counts: how often each (upstream, repository, tag) was pulled, and when last.

A pull is a manifest GET answered 200, as registries count them (Docker Hub's pull count
counts manifest GETs; HEADs and blob GETs are not pulls). A pull by digest counts for the
repository under the tag ``BY_DIGEST``. Counts wait in memory and go to the index with the
access times, in one batch: never a write per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# The tag a pull by digest counts under: no tag may be empty, so it cannot collide.
BY_DIGEST = ""

# Distinct (upstream, repository, tag) waiting for a flush; past it further new ones are
# not counted (an index away for long must not grow memory without end).
MAX_PENDING = 10_000

PullKey = tuple[str, str, str]  # (upstream, repository, tag or BY_DIGEST)


@dataclass(slots=True)
class Pulls:
    count: int
    last: float  # time.time() of the latest pull

    def add(self, other: Pulls) -> None:
        self.count += other.count
        self.last = max(self.last, other.last)


class PendingPulls:
    """Pulls counted since the last flush."""

    def __init__(self) -> None:
        self._pending: dict[PullKey, Pulls] = {}

    def note(self, upstream: str, repo: str, tag: str | None) -> None:
        self._add((upstream, repo, BY_DIGEST if tag is None else tag), Pulls(1, time.time()))

    def _add(self, at: PullKey, pulls: Pulls) -> None:
        found = self._pending.get(at)
        if found is not None:
            found.add(pulls)
        elif len(self._pending) < MAX_PENDING:
            self._pending[at] = pulls

    def take(self) -> dict[PullKey, Pulls]:
        batch, self._pending = self._pending, {}
        return batch

    def add_to(
        self, found: dict[tuple[str, str], dict[str, Pulls]], wanted: list[tuple[str, str]]
    ) -> None:
        """Add the pulls not yet flushed for the ``wanted`` repositories to ``found`` (what
        the index holds), so a page shows a pull made a moment ago."""
        asked = set(wanted)
        for (upstream, repo, tag), pulls in self._pending.items():
            if (upstream, repo) in asked:
                tags = found.setdefault((upstream, repo), {})
                total = tags.setdefault(tag, Pulls(0, 0.0))
                total.add(pulls)

    def give_back(self, batch: dict[PullKey, Pulls]) -> None:
        """A batch the index could not take: counted again at the next flush."""
        for at, pulls in batch.items():
            self._add(at, pulls)


def by_tag(rows: list[tuple[str, int, float]]) -> dict[str, Pulls]:
    """A repository's rows of (tag, count, last) as the index returns them."""
    return {tag: Pulls(int(count), float(last)) for tag, count, last in rows}
