"""The one rule for who may read a digest (mirror.provenance), on a real SQLite index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from pullthrough.errors import BlobUnknown
from pullthrough.mirror.provenance import Kind, Provenance
from pullthrough.store.index import Index
from pullthrough.upstream.client import UpstreamClient

D = "sha256:" + "d" * 64
L = "sha256:" + "1" * 64


@dataclass
class Upstream:
    """Stands in for an UpstreamClient: answers HEADs from a set, records them."""

    name: str
    holds: set[tuple[str, str]] = field(default_factory=set)
    heads: list[tuple[str, str]] = field(default_factory=list)

    async def head_blob(self, repo: str, digest: str) -> int | None:
        self.heads.append((repo, digest))
        return 1 if (repo, digest) in self.holds else None

    async def head_manifest(self, repo: str, digest: str, accept: Any) -> object | None:
        return await self.head_blob(repo, digest)


def client(u: Upstream) -> UpstreamClient:
    return cast(UpstreamClient, u)


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    idx = Index(tmp_path / "index.db")
    await idx.open()
    yield idx
    await idx.close()


async def test_an_upstream_that_never_served_the_bytes_reads_nothing(index: Index) -> None:
    good, evil = Upstream("good.example"), Upstream("evil.example", holds={("x", D)})
    rule = Provenance(index)
    await rule.served("good.example", "private/app", D, 10)
    # The hostile upstream says yes to every HEAD: it is not even asked, it must serve.
    assert not await rule.readable(client(evil), "x", D, Kind.BLOB)
    assert evil.heads == []
    assert not await rule.readable(client(evil), "private/app", D, Kind.BLOB)
    assert await rule.readable(client(good), "private/app", D, Kind.BLOB)
    # Once it served the bytes itself, its HEAD counts for its other repositories.
    await rule.served("evil.example", "y", D, 10)
    assert await rule.readable(client(evil), "x", D, Kind.BLOB)
    assert evil.heads == [("x", D)]


async def test_another_repository_needs_the_upstreams_head(index: Index) -> None:
    up = Upstream("reg.example", holds={("b", D)})
    rule = Provenance(index)
    await rule.served("reg.example", "a", D, 10)
    with pytest.raises(BlobUnknown):
        await rule.readable(client(up), "c", D, Kind.BLOB)
    assert await rule.readable(client(up), "b", D, Kind.BLOB)
    assert await rule.readable(client(up), "b", D, Kind.BLOB)  # remembered: one HEAD
    assert up.heads == [("c", D), ("b", D)]


async def test_a_manifests_references_count_only_once_the_upstream_served_them(
    index: Index,
) -> None:
    up, other = Upstream("reg.example"), Upstream("other.example")
    rule = Provenance(index)
    manifest = "sha256:" + "a" * 64
    await rule.served("reg.example", "app", manifest, 100, media_type="x", references=[L])
    await rule.served("other.example", "lib", L, 10)  # the layer came from elsewhere
    assert not await rule.readable(client(up), "app", L, Kind.BLOB)
    await rule.served("reg.example", "base", L, 10)
    assert await rule.readable(client(up), "app", L, Kind.BLOB)
    assert up.heads == []  # (b): the reference is the proof, no HEAD
    with pytest.raises(BlobUnknown):  # other served L, but not for its "app"
        await rule.readable(client(other), "app", L, Kind.BLOB)


async def test_recorded_never_asks_the_upstream(index: Index) -> None:
    rule = Provenance(index)
    await rule.served("reg.example", "app", D, 10)
    assert await rule.recorded("reg.example", "app", D)
    assert not await rule.recorded("reg.example", "other", D)
    assert not await rule.recorded("evil.example", "app", D)


async def test_forgotten_digests_are_no_longer_readable(index: Index) -> None:
    up = Upstream("reg.example")
    rule = Provenance(index)
    await rule.served("reg.example", "app", D, 10)
    assert await rule.readable(client(up), "app", D, Kind.BLOB)
    await index.forget(D)
    rule.forget(D)
    assert not await rule.readable(client(up), "app", D, Kind.BLOB)


async def test_an_old_index_trusts_a_digest_only_to_its_single_upstream(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "index.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE links (upstream TEXT, repo TEXT, digest TEXT,"
        " PRIMARY KEY (upstream, repo, digest));"
    )
    db.executemany(
        "INSERT INTO links VALUES (?,?,?)",
        [("a.example", "r", D), ("a.example", "s", D)]
        + [("a.example", "r", L), ("b.example", "t", L)],
    )
    db.commit()
    db.close()
    idx = Index(path)
    await idx.open()
    try:
        assert await idx.served_by("a.example", D)
        assert not await idx.served_by("a.example", L)  # linked under two: nobody's word
        assert not await idx.served_by("b.example", L)
    finally:
        await idx.close()
