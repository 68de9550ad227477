"""What gc relies on below the mirror: the index never records a tag for a digest it does
not hold, and a file is removed only if it is still the one eviction decided on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

from pullthrough.mirror.eviction import ADOPT_AFTER, Sweeper
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import Index

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
M = "sha256:" + "a" * 64


async def test_a_tag_is_not_recorded_for_a_digest_the_index_dropped(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.db")
    await index.open()
    try:
        await index.record(M, 10, media_type=MANIFEST, upstream="docker.io", repo="library/x")
        assert await index.set_tag("docker.io", "library/x", "v1", media_type=MANIFEST, digest=M)
        await index.forget_all([M])  # gc, in another process
        assert not await index.set_tag(
            "docker.io", "library/x", "v1", media_type=MANIFEST, digest=M
        )
        assert await index.tag("docker.io", "library/x", "v1") == []
    finally:
        await index.close()


def test_a_copy_stored_again_after_gc_decided_is_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.prepare()
    data = b"layer bytes"
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())
    store._put_sync(digest, data)
    decided = store.identity_sync(digest)
    assert decided is not None
    store._put_sync(digest, data)  # fetched again by the server meanwhile: a new file

    assert not store.remove_if_same_sync(digest, decided)
    assert store.path_for(digest).read_bytes() == data
    assert list(store.tmp_dir.iterdir()) == []

    assert store.remove_if_same_sync(digest, store.identity_sync(digest) or (0, 0))
    assert not store.path_for(digest).exists()
    assert list(store.tmp_dir.iterdir()) == []


async def test_gc_leaves_a_file_just_renamed_into_place_to_the_server_that_indexes_it(
    tmp_path: Path,
) -> None:
    """CI: a server stopped between renaming a fetched file into place and indexing it;
    gc (TTL 1 ms) adopted the file and removed it, then the server indexed it: an entry
    without a file. A file that old is still adopted (a crash at that moment)."""
    store = BlobStore(tmp_path)
    store.prepare()
    index = Index(tmp_path / "index.db")
    await index.open()
    try:
        fresh, old = b"just fetched", b"left by a crash"
        digests = [parse_digest("sha256:" + hashlib.sha256(d).hexdigest()) for d in (fresh, old)]
        for digest, data in zip(digests, (fresh, old), strict=True):
            store._put_sync(digest, data)
        long_ago = time.time() - ADOPT_AFTER - 5
        os.utime(store.path_for(digests[1]), (long_ago, long_ago))
        sweeper = Sweeper(
            store=store, index=index, ttls={}, default_ttl=0.001, limit=None, batch=100
        )

        assert await sweeper.reconcile() == (1, 0)
        await asyncio.sleep(0.01)
        report = await sweeper.sweep()
        assert [b.digest for b in report.expired] == [str(digests[1])]
        # The server, continued, indexes what it renamed into place.
        await index.record(
            str(digests[0]), len(fresh), media_type=None, upstream="docker.io", repo="library/x"
        )
        assert await index.digests() == {str(digests[0])}
        assert store.path_for(digests[0]).read_bytes() == fresh
        assert not store.path_for(digests[1]).exists()
    finally:
        await index.close()
