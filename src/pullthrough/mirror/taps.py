"""A reader's private feed of a fetch's bytes, for when they cannot go through the disk.

Normally every reader of a fetch reads the growing temp file. When the disk is full (or
the store is over its limit with nothing left to evict), the fetch keeps downloading but
stops writing: from then on it hands each chunk to every attached reader through its Tap.
A Tap holds a bounded number of bytes, so the download goes at the pace of the slowest
reader and memory stays flat whatever the blob's size.
"""

from __future__ import annotations

import asyncio
from collections import deque

from pullthrough.errors import RegistryError

# Bytes a tap may hold before the fetch waits for its reader.
TAP_BUFFER = 8 * 1024 * 1024


class Tap:
    def __init__(self) -> None:
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._held = 0
        self._changed = asyncio.Event()
        self._ended = False
        self._error: RegistryError | None = None
        self.closed = False  # the reader went away: the fetch stops feeding this tap

    async def put(self, offset: int, data: bytes) -> None:
        """Queue ``data`` (which starts at byte ``offset`` of the blob); waits while the
        reader is more than TAP_BUFFER behind."""
        while self._held >= TAP_BUFFER and not self.closed:
            await self._wait()
        if self.closed:
            return
        self._chunks.append((offset, data))
        self._held += len(data)
        self._wake()

    def end(self, error: RegistryError | None) -> None:
        """No more chunks: the blob was verified (``None``) or the fetch failed."""
        self._ended, self._error = True, error
        self._wake()

    async def get(self) -> tuple[int, bytes] | None:
        """The next (offset, bytes); None once the fetch verified the blob; raises the
        fetch's error if it failed."""
        while not self._chunks:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            await self._wait()
        offset, data = self._chunks.popleft()
        self._held -= len(data)
        self._wake()
        return offset, data

    def close(self) -> None:
        self.closed = True
        self._chunks.clear()
        self._held = 0
        self._wake()

    async def _wait(self) -> None:
        event = self._changed
        await event.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
