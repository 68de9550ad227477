"""Multipart uploads a crash left in the bucket are aborted by the sweep: only the mirror's
own (under its root directory), only once they are old enough."""

from __future__ import annotations

import asyncio

import pytest

from pullthrough.config.model import S3Config
from pullthrough.store.bucket_uploads import BucketUploads
from tests.s3.conftest import S3Bucket
from tests.support.s3_client import s3_client

pytestmark = [pytest.mark.integration, pytest.mark.s3]

OURS = "mirror/docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data"
THEIRS = "someone-else/upload"


def sweeper(bucket: S3Bucket, **changes: object) -> BucketUploads:
    config = S3Config(
        bucket=bucket.bucket,
        region=bucket.region,
        endpoint=bucket.endpoint_url,
        path_style=True,
        access_key=bucket.access_key,
        secret_key=bucket.secret_key,
        prefix="mirror",
    )
    for name, value in changes.items():
        object.__setattr__(config, name, value)
    return BucketUploads(config)


async def _start_uploads(bucket: S3Bucket) -> None:
    async with s3_client(bucket) as s3:
        for key in (OURS, THEIRS):
            started = await s3.create_multipart_upload(Bucket=bucket.bucket, Key=key)
            await s3.upload_part(
                Bucket=bucket.bucket,
                Key=key,
                UploadId=started["UploadId"],
                PartNumber=1,
                Body=b"x" * (5 * 1024 * 1024),
            )


async def _pending(bucket: S3Bucket) -> list[str]:
    async with s3_client(bucket) as s3:
        listed = await s3.list_multipart_uploads(Bucket=bucket.bucket)
        return sorted(u["Key"] for u in listed.get("Uploads", []))


def test_the_sweep_aborts_only_old_uploads_under_the_mirrors_root(s3_bucket: S3Bucket) -> None:
    asyncio.run(_start_uploads(s3_bucket))
    assert asyncio.run(_pending(s3_bucket)) == sorted([OURS, THEIRS])
    uploads = sweeper(s3_bucket)
    assert asyncio.run(uploads.sweep(older_than=3600)) == 0  # still young: left running
    assert asyncio.run(_pending(s3_bucket)) == sorted([OURS, THEIRS])
    assert asyncio.run(uploads.sweep(older_than=0)) == 1
    assert asyncio.run(_pending(s3_bucket)) == [THEIRS]


def test_a_wrong_secret_is_refused_not_ignored(s3_bucket: S3Bucket) -> None:
    from pullthrough.store.bucket import BucketUnavailable

    uploads = sweeper(s3_bucket, secret_key="not-the-secret")
    with pytest.raises(BucketUnavailable, match="403"):
        asyncio.run(uploads.sweep(older_than=0))
