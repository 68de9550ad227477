"""A push and a sweep of the same digest at the same moment (the bytes cached for a mirrored
name and pushed to a hosted repository, possibly through another replica): the pushed file
stays, whichever of them looks first."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullthrough.errors import BlobUploadUnknown
from pullthrough.hosted.uploads import Uploads
from pullthrough.mirror.eviction import Sweeper
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.identity import FileIdentity
from pullthrough.store.index import Index

DATA = b"a base layer, cached and pushed"
DIGEST = parse_digest("sha256:" + hashlib.sha256(DATA).hexdigest())


async def _cached(tmp_path: Path) -> tuple[BlobStore, Index]:
    store = BlobStore(tmp_path)
    store.prepare()
    index = Index(tmp_path / "index.db")
    await index.open()
    store._put_sync(DIGEST, DATA)
    await index.record(str(DIGEST), len(DATA), media_type=None, upstream="docker.io", repo="x")
    await asyncio.sleep(0.01)  # past the TTL below
    return store, index


def _sweeper(store: BlobStore, index: Index, answers: list[set[str]]) -> Sweeper:
    """A sweeper whose ``held`` gives ``answers`` in turn (then the last one again)."""
    asked: list[list[str]] = []

    async def held(digests: list[str]) -> set[str]:
        asked.append(digests)
        return answers[min(len(asked), len(answers)) - 1] & set(digests)

    return Sweeper(
        store=store, index=index, ttls={}, default_ttl=0.001, limit=None, batch=100, held=held
    )


async def test_a_digest_held_before_the_sweep_removes_is_spared(tmp_path: Path) -> None:
    store, index = await _cached(tmp_path)
    try:
        report = await _sweeper(store, index, [{str(DIGEST)}]).sweep()
        assert report.expired == [] and report.objects == 1
        assert store.path_for(DIGEST).read_bytes() == DATA
    finally:
        await index.close()


async def test_a_digest_pushed_while_its_file_is_set_aside_goes_back(tmp_path: Path) -> None:
    store, index = await _cached(tmp_path)
    try:
        # Not held when the pass decides; held by the time the file is out of the store.
        await _sweeper(store, index, [set(), {str(DIGEST)}]).sweep()
        assert store.path_for(DIGEST).read_bytes() == DATA
        assert list(store.tmp_dir.iterdir()) == []
    finally:
        await index.close()


async def test_a_digest_nobody_holds_is_removed(tmp_path: Path) -> None:
    store, index = await _cached(tmp_path)
    try:
        report = await _sweeper(store, index, [set()]).sweep()
        assert [b.digest for b in report.expired] == [str(DIGEST)]
        assert not store.path_for(DIGEST).exists()
        assert list(store.tmp_dir.iterdir()) == []
    finally:
        await index.close()


async def test_an_upload_swept_before_it_was_recorded_is_put_back(tmp_path: Path) -> None:
    store, index = await _cached(tmp_path)
    await index.close()
    uploads = Uploads(root=tmp_path, store=store, idle=3600, per_client=5)
    uploads.prepare()
    session = await uploads.start("acme/app", "127.0.0.1")

    async def body() -> AsyncIterator[bytes]:
        yield DATA

    session = await uploads.append(session, body())
    recorded: list[int] = []

    async def record_after_a_sweep(size: int) -> None:
        # A sweep (another replica's) removed the file just placed, before this record.
        identity = store.identity_sync(DIGEST)
        assert identity is not None
        assert store.remove_if_same_sync(DIGEST, identity)
        recorded.append(size)

    assert await uploads.finish(session, DIGEST, record_after_a_sweep) == len(DATA)
    assert recorded == [len(DATA)]
    assert store.path_for(DIGEST).read_bytes() == DATA
    assert list(uploads.dir.iterdir()) == []  # the session's link went once it was safe
    placed = FileIdentity.of(store.path_for(DIGEST).stat())
    assert store.verified.matches(DIGEST, placed)  # served without hashing it again


async def test_an_upload_cancelled_elsewhere_as_it_finishes_is_stored_or_unknown(
    tmp_path: Path,
) -> None:
    """A cancel through another replica takes no lock: after the file is in the store the
    push still succeeds; before, it is BLOB_UPLOAD_UNKNOWN, never a 500."""
    store = BlobStore(tmp_path)
    store.prepare()
    uploads = Uploads(root=tmp_path, store=store, idle=3600, per_client=5)
    uploads.prepare()

    async def body() -> AsyncIterator[bytes]:
        yield DATA

    session = await uploads.start("acme/app", "127.0.0.1")
    session = await uploads.append(session, body())

    async def cancelled_meanwhile(size: int) -> None:
        (uploads.dir / f"{session.id}.data").unlink()
        (uploads.dir / f"{session.id}.repo").unlink()

    assert await uploads.finish(session, DIGEST, cancelled_meanwhile) == len(DATA)
    assert store.path_for(DIGEST).read_bytes() == DATA

    store.path_for(DIGEST).unlink()
    session = await uploads.start("acme/app", "127.0.0.1")
    session = await uploads.append(session, body())

    async def swept_and_cancelled(size: int) -> None:
        store.path_for(DIGEST).unlink()
        (uploads.dir / f"{session.id}.data").unlink()

    with pytest.raises(BlobUploadUnknown):
        await uploads.finish(session, DIGEST, swept_and_cancelled)
