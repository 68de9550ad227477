"""Opening the store and index of a config without running the server, for the
operator's commands (which may run while the server is up: SQLite in WAL mode allows it,
and in cluster mode the index is the replicas' shared one in Redis)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pullthrough.config import Config
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import Index, IndexBackend

if TYPE_CHECKING:
    from pullthrough.cluster.connection import Coordination


class IndexUnavailable(Exception):
    """The index cannot be read (Redis does not answer): the command cannot say anything true."""


@dataclass
class Offline:
    config: Config
    store: BlobStore
    index: IndexBackend
    where: str  # the index, for messages: its file, or the Redis it lives in
    coordination: Coordination | None = None  # cluster mode only


def has_index(config: Config) -> bool:
    """Whether anything was ever indexed (opening a missing SQLite file would create it)."""
    return config.cluster is not None or config.index_path.is_file()


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Offline]:
    """The store and an open index; the store's directories are not touched (no temp
    clean-up: a running server may own the temp files)."""
    store = BlobStore(config.root)
    if config.s3 is not None:
        from pullthrough.store.bucket import Bucket  # loads obstore: only with a bucket

        store.bucket = Bucket(config.s3)
    if config.cluster is None:
        index = Index(config.index_path)
        await index.open()
        try:
            yield Offline(config, store, index, str(config.index_path))
        finally:
            await index.close()
        return

    from redis.exceptions import RedisError

    from pullthrough.cluster.connection import Coordination, RedisUnavailable
    from pullthrough.cluster.index import RedisIndex

    coordination = Coordination(config.cluster)
    where = f"redis at {coordination.address} (mirror.cluster.redis)"
    try:
        try:  # the client itself: Coordination would log a replica's "suspended" warning
            await coordination.client.ping()
        except (RedisError, OSError) as exc:
            raise IndexUnavailable(
                f"the shared index cannot be read: {where} does not answer ({exc})"
            ) from None
        shared = RedisIndex(coordination)
        try:
            yield Offline(config, store, shared, where, coordination)
        except RedisUnavailable as exc:
            raise IndexUnavailable(f"{where} stopped answering: {exc}") from None
        finally:
            await shared.close()
    finally:
        await coordination.close()


@asynccontextmanager
async def hosted_copy(opened: Offline, *, write: bool = False) -> AsyncIterator[Path]:
    """The ``hosted.db`` a command reads: the one under the store's root or, for replicas
    on a bucket (storage.s3 with mirror.cluster), a private copy of the bucket's shared
    one (the local file is a running replica's own). With ``write`` that copy is changed
    under the cluster's hosted write lock and published when the block ends, as a
    replica's writes are."""
    config = opened.config
    path = config.root / "hosted.db"
    if (
        config.hosted is None
        or config.s3 is None
        or opened.coordination is None
        or opened.store.bucket is None
    ):
        yield path
        return
    from pullthrough.cluster.hosted_index import SharedHostedIndex
    from pullthrough.mirror.bucket_tier import BucketTier

    tier = BucketTier(config.s3, opened.store.bucket, opened.store, opened.index)
    with tempfile.TemporaryDirectory(prefix="pullthrough-hosted-") as tmp:
        shared = SharedHostedIndex(Path(tmp) / "hosted.db", opened.coordination, tier)
        await shared.open()
        try:
            if write:
                async with shared.writing():
                    yield shared.path
            else:
                yield shared.path
        finally:
            await shared.close()
            await tier.close()
