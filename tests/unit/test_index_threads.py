"""The SQLite index used from many requests at once (found by scripts/soak.py).

Every statement runs on the index's one thread. A cursor returned from that thread was
finalized on the event loop instead, resetting its statement while the index thread was using
the connection: concurrent pulls got sqlite3.InterfaceError "bad parameter or other API
misuse" from ``link`` (a 500 on a manifest GET by tag) about once in a thousand writes.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pullthrough.store.index import Index

DIGESTS = [f"sha256:{i:064x}" for i in range(30)]


async def _every_write(index: Index, rng: random.Random) -> None:
    digest = rng.choice(DIGESTS)
    kind = rng.randrange(8)
    if kind == 0:
        await index.link("u", "r", digest, children=rng.sample(DIGESTS, 3))
    elif kind == 1:
        await index.record(
            digest, 10, media_type=None, upstream="u", repo="r", children=rng.sample(DIGESTS, 2)
        )
    elif kind == 2:
        await index.is_linked("u", "r", digest)
    elif kind == 3:
        await index.least_recent(5, accessed_before=time.time())
    elif kind == 4:
        await index.forget_all(rng.sample(DIGESTS, 3))
    elif kind == 5:
        index.touch(digest)
        await index.flush_access()
    elif kind == 6:
        await index.set_tag("u", "r", "t", media_type="m", digest=digest)
        await index.drop_tag("u", "r", "t")
    else:
        await index.adopt(digest, 10, time.time())


async def test_no_statement_hands_a_cursor_back_to_the_event_loop(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.db")
    await index.open()
    returned: list[object] = []
    run = index._run

    async def spy(fn: Callable[[], Any]) -> Any:
        result = await run(fn)
        returned.append(result)
        return result

    index._run = spy  # type: ignore[method-assign]
    rng = random.Random(1)
    for _ in range(400):
        await _every_write(index, rng)
    await index.close()
    assert not [r for r in returned if isinstance(r, sqlite3.Cursor)]


async def test_concurrent_writes_never_misuse_the_connection(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.db")
    await index.open()

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(1000):
            await _every_write(index, rng)

    try:
        await asyncio.gather(*(client(seed) for seed in range(8)))
    finally:
        await index.close()
