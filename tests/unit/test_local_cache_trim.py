"""storage.s3's local cache keeps within its size by dropping the least recently used
blobs the index holds (never manifests, never a running download), and drops local files
the index does not hold (evicted elsewhere, or never uploaded) once they are not new."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullthrough.config.model import S3Config
from pullthrough.mirror.bucket_tier import STRAY_AFTER, BucketTier
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.bucket import Bucket
from pullthrough.store.index import Index


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    idx = Index(tmp_path / "index.db")
    await idx.open()
    yield idx
    await idx.close()


def blob(n: int, size: int) -> tuple[str, bytes]:
    data = bytes([n]) * size
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


async def test_trim_keeps_the_cache_within_its_size(tmp_path: Path, index: Index) -> None:
    config = S3Config(
        bucket="b-1", region="r", endpoint="http://127.0.0.1:9", path_style=True, local_cache=2500
    )
    store = BlobStore(tmp_path / "cache")
    store.prepare()
    tier = BucketTier(config, Bucket(config), store, index)
    now = time.time()
    names = {}
    # "recent" is indexed before "old": the order they go in is not what decides.
    for n, (kind, age) in enumerate(
        [("recent", 10), ("old", 300), ("manifest", 500), ("stray", 0), ("busy", 0), ("new", 0)]
    ):
        digest, data = blob(n, 1000)
        names[kind] = digest
        await store.put(parse_digest(digest), data)
        if kind == "manifest":
            await index.record(
                digest,
                1000,
                media_type="application/vnd.oci.image.manifest.v1+json",
                upstream="docker.io",
                repo="r",
            )
        elif kind in ("old", "recent"):
            await index.adopt(digest, 1000, now - age)  # an entry last read ``age`` s ago
    old_mtime = now - STRAY_AFTER - 10
    for kind in ("stray", "busy"):
        os.utime(store.path_for(parse_digest(names[kind])), (old_mtime, old_mtime))

    freed = await tier.trim(lambda digest: digest == names["busy"])
    left = {f.digest for f in store.scan()}
    assert names["stray"] not in left  # unindexed and not new: nobody's
    assert {names["busy"], names["new"]} <= left  # a running download; a file just renamed
    assert names["manifest"] in left  # manifests stay
    # Indexed blobs: 3,000 bytes over a 2,500-byte cache: the least recently used goes.
    assert names["old"] not in left and names["recent"] in left
    assert freed == 2000
