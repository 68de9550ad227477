"""The reference registry (distribution 2.8's S3 driver) stores in and serves from the test
S3 server: the anchor the S3 benchmarks compare pullthrough against."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import KiB, MiB
from tests.support.images import blob_digests_in_dir, make_image, pull_dir, push
from tests.support.registry import RegistryFactory
from tests.support.s3_client import s3_client
from tests.support.s3_server import CephS3

pytestmark = [pytest.mark.s3, pytest.mark.integration]


async def test_reference_registry_pushes_and_pulls_through_s3(
    s3_server: CephS3, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    root = "/reference-registry"
    registry = registry_factory(storage_driver=s3_server.distribution_storage(root))
    image = make_image(tmp_path / "layout", [2 * MiB, 64 * KiB], seed="s3-anchor", ref="v1")

    digest = push(image, registry.host, "anchor/app", "v1")
    assert digest == image.manifest_digest

    # The bytes are in the bucket, under the registry's root, not on the registry's disk.
    async with s3_client(s3_server) as s3:
        listed = await s3.list_objects_v2(
            Bucket=s3_server.bucket, Prefix=f"{root.strip('/')}/docker/registry/v2/blobs/"
        )
    stored = {obj["Key"].split("/")[-2] for obj in listed["Contents"]}
    assert {d.split(":")[1] for d in image.blob_digests} <= stored
    assert registry.blob_digests_on_disk() == set()

    # A pull follows the registry's redirect to a presigned URL on the S3 server.
    pulled = tmp_path / "pulled"
    pull_dir(f"{registry.host}/anchor/app:v1", pulled)
    assert set(blob_digests_in_dir(pulled)) >= image.blob_digests - {image.manifest_digest}
    blob = registry.request("GET", f"/v2/anchor/app/blobs/{image.layer_digests[0]}")
    assert blob.status == 307
    assert (blob.header("Location") or "").startswith(f"{s3_server.endpoint_url}/")
