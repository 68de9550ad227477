"""Opening the store and index of a config without running the server, for the
operator's commands (which may run while the server is up: SQLite in WAL mode allows it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pullthrough.config import Config
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import Index


@dataclass
class Offline:
    config: Config
    store: BlobStore
    index: Index


@asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Offline]:
    """The store and an open index; the store's directories are not touched (no temp
    clean-up: a running server may own the temp files)."""
    index = Index(config.index_path)
    await index.open()
    try:
        yield Offline(config, BlobStore(config.root), index)
    finally:
        await index.close()
