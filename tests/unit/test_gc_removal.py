"""What gc relies on below the mirror: the index never records a tag for a digest it does
not hold, and a file is removed only if it is still the one eviction decided on."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
