"""The tests' S3 client: aiobotocore (the library bench/s3_clients.py chose), pointed at a
test server the way pullthrough's S3 driver will be: custom endpoint, path-style, plain
HTTP, explicit keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session


class S3Endpoint(Protocol):
    """What a client needs to know about a server (``s3_server.CephS3`` is one)."""

    @property
    def endpoint_url(self) -> str: ...

    access_key: str
    secret_key: str
    region: str
    bucket: str


@contextlib.asynccontextmanager
async def s3_client(server: S3Endpoint, **config: Any) -> AsyncIterator[Any]:
    """An aiobotocore S3 client for ``server``; ``config`` adds ``AioConfig`` settings
    (for example ``retries={"max_attempts": 1}`` to see a fault at once)."""
    settings: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "connect_timeout": 5,
        "read_timeout": 60,
        **config,
    }
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=AioConfig(**settings),
    ) as client:
        yield client


def create_bucket(server: S3Endpoint) -> None:
    """Create ``server.bucket`` (blocking; for fixtures)."""

    async def create() -> None:
        async with s3_client(server) as client:
            await client.create_bucket(Bucket=server.bucket)

    asyncio.run(create())
