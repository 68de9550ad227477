"""The test S3 server does what the S3 storage driver will ask of it, through the client
library the driver will use."""

from __future__ import annotations

import hashlib

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.support import MiB
from tests.support.s3_client import s3_client
from tests.support.s3_server import CephS3

pytestmark = pytest.mark.s3


async def test_put_get_list_delete(s3_server: CephS3) -> None:
    bucket, body = s3_server.bucket, b"layer bytes " * 1000
    async with s3_client(s3_server) as s3:
        await s3.put_object(Bucket=bucket, Key="smoke/a/blob", Body=body)
        got = await s3.get_object(Bucket=bucket, Key="smoke/a/blob")
        async with got["Body"] as stream:
            assert await stream.read() == body
        ranged = await s3.get_object(Bucket=bucket, Key="smoke/a/blob", Range="bytes=6-10")
        async with ranged["Body"] as stream:
            assert await stream.read() == body[6:11]
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="smoke/")
        assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("smoke/a/blob", len(body))]
        await s3.delete_object(Bucket=bucket, Key="smoke/a/blob")
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="smoke/")
        assert listed.get("Contents", []) == []
        with pytest.raises(ClientError) as missing:
            await s3.head_object(Bucket=bucket, Key="smoke/a/blob")
        assert missing.value.response["Error"]["Code"] == "404"


async def test_multipart_upload_listed_then_aborted(s3_server: CephS3) -> None:
    bucket, key = s3_server.bucket, "multipart/aborted"
    async with s3_client(s3_server) as s3:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * (5 * MiB)
        )
        pending = await s3.list_multipart_uploads(Bucket=bucket, Prefix="multipart/")
        assert [(u["Key"], u["UploadId"]) for u in pending["Uploads"]] == [(key, upload_id)]
        # A sweep tells a stale upload by its start time.
        assert pending["Uploads"][0]["Initiated"] is not None

        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        pending = await s3.list_multipart_uploads(Bucket=bucket, Prefix="multipart/")
        assert pending.get("Uploads", []) == []
        with pytest.raises(ClientError):
            await s3.head_object(Bucket=bucket, Key=key)


async def test_multipart_upload_visible_only_once_completed(s3_server: CephS3) -> None:
    bucket, key = s3_server.bucket, "multipart/completed"
    parts = [b"a" * (5 * MiB), b"b" * (1 * MiB)]
    async with s3_client(s3_server) as s3:
        upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        etags = []
        for number, part in enumerate(parts, start=1):
            done = await s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
            )
            etags.append({"PartNumber": number, "ETag": done["ETag"]})
        with pytest.raises(ClientError):
            await s3.head_object(Bucket=bucket, Key=key)
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": etags}
        )
        got = await s3.get_object(Bucket=bucket, Key=key)
        async with got["Body"] as stream:
            digest = hashlib.sha256(await stream.read()).hexdigest()
        assert digest == hashlib.sha256(b"".join(parts)).hexdigest()
        await s3.delete_object(Bucket=bucket, Key=key)


async def test_stopped_server_refuses_then_comes_back_with_its_content(
    own_s3_server: CephS3,
) -> None:
    server = own_s3_server
    port = server.port
    async with s3_client(server) as s3:
        await s3.put_object(Bucket=server.bucket, Key="kept", Body=b"still here")
    server.stop()
    assert server.pid is None
    async with s3_client(server, retries={"max_attempts": 1}) as s3:
        with pytest.raises(EndpointConnectionError):
            await s3.get_object(Bucket=server.bucket, Key="kept")
    server.start()
    assert server.port == port
    async with s3_client(server) as s3:
        got = await s3.get_object(Bucket=server.bucket, Key="kept")
        async with got["Body"] as stream:
            assert await stream.read() == b"still here"
