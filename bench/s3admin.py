"""The bench's side of the S3 server: buckets made and emptied per run, and whether a blob
is stored (a HEAD of its object, at the key layout both mirrors share). botocore, blocking:
the driver asks one thing at a time."""

from __future__ import annotations

import contextlib
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

BLOBS = "docker/registry/v2/blobs"


class S3Admin:
    """``server`` is a ``tests.support.s3_server.CephS3`` (anything with its attributes)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=server.region,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3},
            ),
        )

    def create(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def storage(self, bucket: str, rootdirectory: str = "/bench") -> dict[str, Any]:
        """distribution's ``storage.s3`` for ``bucket`` (pullthrough reads the same keys)."""
        return {
            "s3": {
                **self.server.distribution_storage(rootdirectory)["s3"],
                "bucket": bucket,
            }
        }

    def probe(self, bucket: str, rootdirectory: str = "/bench") -> Any:
        """``has_blob`` for a mirror storing in ``bucket``: its object exists (complete)."""
        prefix = rootdirectory.strip("/")

        def has(digest: str) -> bool:
            algo, hexd = digest.split(":", 1)
            key = f"{prefix}/{BLOBS}/{algo}/{hexd[:2]}/{hexd}/data".lstrip("/")
            try:
                self.client.head_object(Bucket=bucket, Key=key)
            except ClientError:
                return False
            return True

        return has

    def usage(self, bucket: str) -> tuple[int, int]:
        """(objects, bytes) in ``bucket``."""
        n = size = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                n += 1
                size += obj["Size"]
        return n, size

    def drop(self, bucket: str) -> None:
        """Abort its multipart uploads, delete every object, then the bucket: the OSD keeps
        objects in memory (radosgw frees them a few seconds later, by its gc)."""
        with contextlib.suppress(ClientError):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
            for page in pages:
                for up in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
        with contextlib.suppress(ClientError):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            self.client.delete_bucket(Bucket=bucket)
