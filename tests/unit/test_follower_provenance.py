"""A cluster follower remembers who may read the blob it followed (found by CI in
tests/cluster/test_redis_outage.py): the owner renames the verified file into place and
only then records it in the index, so a follower that asks the index at the rename can
find nothing. If it only asked, the blob it had just served was a miss once Redis went
down, and with the upstream down too the pull failed."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pullthrough.cluster.claims import Claim, Claims
from pullthrough.cluster.follow import Follower
from pullthrough.metrics import Metrics
from pullthrough.mirror.fetch import Fetch
from pullthrough.mirror.provenance import Kind, Provenance
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore, new_temp_id
from pullthrough.store.index import Index
from pullthrough.upstream.client import UpstreamClient

DATA = b"layer" * 4000
DIGEST = parse_digest("sha256:" + hashlib.sha256(DATA).hexdigest())


class RunningClaim:
    """Claims as Redis would answer while the owner downloads: its claim, running."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    async def read(self, digest: object, upstream: str) -> Claim:
        return self.claim


class NoHeads:
    """The upstream, which the follower must not need to ask."""

    name = "docker.io"
    config = SimpleNamespace(read_timeout=30.0, stall_timeout=10.0, stall_budget=25.0)

    async def head_blob(self, repo: str, digest: str) -> int | None:
        raise AssertionError("the follower asked the upstream")


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    idx = Index(tmp_path / "index.db")
    await idx.open()
    yield idx
    await idx.close()


async def test_a_followed_blob_stays_readable_when_the_owner_records_it_after_the_rename(
    tmp_path: Path, index: Index
) -> None:
    store = BlobStore(tmp_path / "store")
    store.prepare()
    provenance = Provenance(index)  # the index never hears of the blob: Redis is down
    upstream = cast(UpstreamClient, NoHeads())

    async def stored(_: Fetch) -> None:
        raise AssertionError("a follower stores nothing")

    fetch = Fetch(
        digest=DIGEST,
        upstream=upstream,
        repo="library/app",
        store=store,
        on_stored=stored,
        metrics=Metrics(),
    )
    file = new_temp_id()
    temp = store.temp_path(DIGEST, file)
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(DATA)  # the owner's download, complete but not yet verified
    claim = Claim(
        owner="node-a#1",
        node="http://127.0.0.1:1",
        file=file,
        path=temp,
        state="running",
        size=len(DATA),
        started=True,
        upstream="docker.io",
        repo="library/app",
        origin="library/app",
    )
    follower = Follower(cast(Claims, RunningClaim(claim)), provenance, fetch, claim, "node-b#1")
    run = asyncio.ensure_future(follower.run())
    await asyncio.sleep(0.3)  # following: the file is whole, but not in place
    assert not run.done()
    final = store.path_for(DIGEST)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(temp, final)  # the owner verified it; its index write has not happened
    verdict, _ = await asyncio.wait_for(run, 5)
    assert verdict == "gone" and fetch.verified and fetch.written == len(DATA)

    assert await provenance.readable(upstream, "library/app", str(DIGEST), Kind.BLOB)
    # Only for the repository and upstream it followed (the index knows nothing else).
    assert not await provenance.readable(upstream, "library/other", str(DIGEST), Kind.BLOB)
    other = cast(UpstreamClient, SimpleNamespace(name="ghcr.io"))
    assert not await provenance.readable(other, "library/app", str(DIGEST), Kind.BLOB)
