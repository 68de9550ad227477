"""Reading upstream bodies safely."""

from __future__ import annotations

import asyncio

import aiohttp

# What a broken or slow upstream connection raises while a body is read.
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, read to its end or until ``limit`` bytes (whichever comes first): a
    hostile upstream cannot make the mirror buffer more than that."""
    parts: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        parts.append(chunk)
        total += len(chunk)
        if total >= limit:
            break
    return b"".join(parts)[:limit]
