"""storage.s3 as a user runs it: a registry:2 S3 config, a real S3 server on loopback, real
pulls with skopeo. What lands in the bucket is checked byte for byte, and what the
upstream was asked for is counted."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullthrough.config import load
from pullthrough.config.model import S3Config
from pullthrough.store.bucket_uploads import BucketUploads
from tests.s3.conftest import S3Bucket, create_bucket
from tests.support import MiB
from tests.support.images import (
    ImageFactory,
    PushedImage,
    blob_digests_in_dir,
    manifest_digest_in_dir,
    pull_dir,
)
from tests.support.net import http_request, wait_until
from tests.support.proxy import RecordingProxy
from tests.support.s3_client import s3_client
from tests.support.s3_server import CephS3

pytestmark = [pytest.mark.integration, pytest.mark.s3]

BLOBS = "docker/registry/v2/blobs"


def bucket_contents(bucket: S3Bucket, prefix: str = "") -> dict[str, bytes]:
    """Every blob object in the bucket, by the digest its key names (read with the tests'
    own S3 client, aiobotocore: not the library the mirror uses)."""
    root = f"{prefix}/{BLOBS}" if prefix else BLOBS

    async def read() -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        async with s3_client(bucket) as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket.bucket, Prefix=root + "/"
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    algorithm, _, hex_ = item["Key"].removeprefix(root + "/").split("/")[:3]
                    try:
                        got = await s3.get_object(Bucket=bucket.bucket, Key=item["Key"])
                    except s3.exceptions.NoSuchKey:
                        continue  # deleted between the listing and the read
                    async with got["Body"] as body:
                        found[f"{algorithm}:{hex_}"] = await body.read()
        return found

    return asyncio.run(read())


def wait_for_image(
    bucket: S3Bucket, image: PushedImage, *, prefix: str = "", timeout: float = 20
) -> None:
    """Until the bucket holds exactly the image's blobs and manifest (they are uploaded once
    verified, after the client had its last byte)."""
    wanted = {*image.blob_digests, image.digest}
    wait_until(
        lambda: set(bucket_contents(bucket, prefix)) == wanted,
        timeout=timeout,
        message=f"{image.ref} in bucket {bucket.bucket}",
    )


def bucket_behind_a_proxy(server: CephS3, proxy_factory: Any) -> tuple[RecordingProxy, S3Bucket]:
    """A new bucket reached through a fault-injecting proxy (which keeps the Host header the
    signatures were made for)."""
    front = proxy_factory(server.endpoint_url)
    front.forward_host = True
    bucket = S3Bucket.on(server, endpoint=front.url)
    create_bucket(bucket)
    return front, bucket


def pullthrough(command: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", command, str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def access_statuses(log: str, path_part: str) -> list[str]:
    return [
        line.split('" ')[1].split()[0]
        for line in log.splitlines()
        if "aiohttp.access" in line and path_part in line and '" ' in line
    ]


def test_a_cold_pull_lands_in_the_bucket_and_a_lost_cache_is_served_from_it(
    s3_bucket: S3Bucket,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    mirror_factory,
    tmp_path: Path,
) -> None:
    image = image_factory("library/s3-cold", layers=(12 * MiB, 1 * MiB))
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"storage": s3_bucket.storage(rootdirectory="/registry", chunksize="5MiB")},
    )
    pull_dir(image.on(mirror.host), tmp_path / "cold")
    assert manifest_digest_in_dir(tmp_path / "cold") == image.digest
    # Uploaded once verified, after the client had its last byte: wait for the bucket.
    wait_for_image(s3_bucket, image, prefix="registry")
    objects = bucket_contents(s3_bucket, "registry")
    for digest, data in objects.items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest

    # The local directory is only a cache: lose it, and the bucket still serves the pull.
    mirror.stop()
    shutil.rmtree(mirror.root / "blobs")
    mirror.start()
    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "again")
    assert manifest_digest_in_dir(tmp_path / "again") == image.digest
    assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "again"))
    assert upstream_proxy.count("GET", "/blobs/") == 0
    # Blob GETs were answered with a redirect to the bucket (storage.redirect's default).
    assert set(access_statuses(mirror.log_text(), "/blobs/")) >= {"307"}


def test_with_redirect_disabled_the_bucket_is_streamed_through_the_mirror(
    s3_bucket: S3Bucket,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    mirror_factory,
    tmp_path: Path,
) -> None:
    image = image_factory("library/s3-stream", layers=(6 * MiB,))
    storage = {**s3_bucket.storage(), "redirect": {"disable": True}}
    mirror = mirror_factory(upstream_proxy.url, config={"storage": storage})
    pull_dir(image.on(mirror.host), tmp_path / "cold")
    wait_for_image(s3_bucket, image)
    mirror.stop()
    shutil.rmtree(mirror.root / "blobs")
    mirror.start()
    upstream_proxy.reset()

    layer = image.source.layer_digests[0]
    got = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{layer}", timeout=30)
    assert got.status == 200
    assert "sha256:" + hashlib.sha256(got.body).hexdigest() == layer
    ranged = http_request(
        "GET",
        f"{mirror.url}/v2/{image.repo}/blobs/{layer}",
        headers={"Range": "bytes=100-199"},
        timeout=30,
    )
    assert ranged.status == 206 and ranged.body == got.body[100:200]
    assert upstream_proxy.count("GET", "/blobs/") == 0
    assert "307" not in access_statuses(mirror.log_text(), "/blobs/")
    # Read back, it is in the local cache again.
    assert layer in mirror.stored_files()


def test_expired_blobs_are_deleted_from_the_bucket(
    s3_bucket: S3Bucket,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    mirror_factory,
    tmp_path: Path,
) -> None:
    image = image_factory("library/s3-ttl", layers=(2 * MiB,))
    mirror = mirror_factory(
        upstream_proxy.url,
        config={
            "storage": s3_bucket.storage(),
            "proxy": {"ttl": "2s"},
            "mirror": {"gc_interval": "0.5s"},
        },
    )
    pull_dir(image.on(mirror.host), tmp_path / "cold")
    wait_for_image(s3_bucket, image)
    wait_until(
        lambda: not bucket_contents(s3_bucket) and not mirror.stored_files(settle=0),
        timeout=30,
        message="the expired image gone from the bucket and the local cache",
    )
    # Expired means fetched again: from the upstream, into the bucket again.
    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "again")
    assert upstream_proxy.count("GET", "/blobs/") == len(image.blob_digests)
    wait_for_image(s3_bucket, image)


def test_a_refused_upload_serves_the_client_and_keeps_nothing(
    s3_server: CephS3,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    proxy_factory,
    mirror_factory,
    tmp_path: Path,
) -> None:
    """The bucket answers 503 to every write for longer than the retries last."""
    front, bucket = bucket_behind_a_proxy(s3_server, proxy_factory)
    image = image_factory("library/s3-refused", layers=(7 * MiB,))
    mirror = mirror_factory(upstream_proxy.url, config={"storage": bucket.storage()})
    front.fault_path_contains = "/docker/registry/v2/blobs/"
    front.fail_status = 503
    pull_dir(image.on(mirror.host), tmp_path / "served")
    assert manifest_digest_in_dir(tmp_path / "served") == image.digest
    assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "served"))
    layer = image.source.layer_digests[0]
    wait_until(  # every upload has given up (each retries on its own clock)
        lambda: (
            all(f"{d} is not kept" in mirror.log_text() for d in image.blob_digests)
            and f"manifest {image.digest} is served but not kept" in mirror.log_text()
        ),
        timeout=60,
        message="every refused upload logged",
    )
    assert front.count("PUT") + front.count("POST") > 1  # retried before giving up
    assert layer not in mirror.stored_files()  # no local copy the index does not vouch for
    front.clear_faults()
    assert bucket_contents(bucket) == {}
    # The bucket answers again: the next pull fetches the blobs again and keeps them.
    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "kept")
    assert upstream_proxy.count("GET", f"/blobs/{layer}") == 1
    wait_until(
        lambda: layer in bucket_contents(bucket), timeout=20, message="the layer in the bucket"
    )


def test_brief_bucket_errors_are_retried(
    s3_server: CephS3,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    proxy_factory,
    mirror_factory,
    tmp_path: Path,
) -> None:
    """503 SlowDown twice, then the bucket takes the upload: nothing is lost or fetched twice."""
    front, bucket = bucket_behind_a_proxy(s3_server, proxy_factory)
    image = image_factory("library/s3-slowdown", layers=(3 * MiB,))
    mirror = mirror_factory(upstream_proxy.url, config={"storage": bucket.storage()})
    front.fault_path_contains = "/docker/registry/v2/blobs/"
    front.fail_body = (
        "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
    )
    front.fail_content_type = "application/xml"
    front.fail_status, front.fail_count = 503, 2
    pull_dir(image.on(mirror.host), tmp_path / "cold")
    wait_for_image(bucket, image, timeout=30)
    assert len(front.requests(path_contains="/docker/registry/v2/blobs/")) >= 2
    assert "is not kept" not in mirror.log_text()
    assert upstream_proxy.count("GET", "/blobs/") == len(image.blob_digests)


def test_wrong_credentials_stop_the_server_at_start_with_the_reason(
    s3_server: CephS3, upstream_proxy: RecordingProxy, mirror_factory
) -> None:
    bucket = S3Bucket.on(s3_server)
    create_bucket(bucket)
    bucket.secret_key = "not-the-secret-0000"
    mirror = mirror_factory(upstream_proxy.url, config={"storage": bucket.storage()}, start=False)
    with pytest.raises(RuntimeError):
        mirror.start(timeout=30)
    log = mirror.log_text()
    assert f"config error: storage.s3: bucket {bucket.bucket}" in log
    assert "403" in log and "SignatureDoesNotMatch" in log
    assert "not-the-secret-0000" not in log and "Traceback" not in log


def test_a_new_process_with_an_empty_disk_serves_what_the_bucket_holds(
    s3_bucket: S3Bucket,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    mirror_factory,
    tmp_path: Path,
) -> None:
    """A pod replaced on another node: no local directory, the same bucket. It starts from
    the index snapshot in the bucket, so the upstream is not asked for the blobs again."""
    image = image_factory("library/s3-new-pod", layers=(4 * MiB, 1 * MiB))
    first = mirror_factory(upstream_proxy.url, config={"storage": s3_bucket.storage()})
    pull_dir(image.on(first.host), tmp_path / "first")
    wait_for_image(s3_bucket, image)
    first.stop()  # writes the index snapshot

    upstream_proxy.reset()
    second = mirror_factory(upstream_proxy.url, config={"storage": s3_bucket.storage()})
    assert second.root != first.root and not second.stored_files(settle=0)
    pull_dir(image.on(second.host), tmp_path / "second")
    assert manifest_digest_in_dir(tmp_path / "second") == image.digest
    assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "second"))
    assert upstream_proxy.count("GET", "/blobs/") == 0
    assert "index restored from the bucket's snapshot" in second.log_text()


def test_verify_finds_missing_and_corrupt_objects_and_repair_drops_them(
    s3_bucket: S3Bucket,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    mirror_factory,
    tmp_path: Path,
) -> None:
    image = image_factory("library/s3-verify", layers=(2 * MiB, 1 * MiB))
    mirror = mirror_factory(upstream_proxy.url, config={"storage": s3_bucket.storage()})
    pull_dir(image.on(mirror.host), tmp_path / "cold")
    wait_for_image(s3_bucket, image)
    mirror.stop()
    first, second = image.source.layer_digests[:2]

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return pullthrough("verify", mirror.config_path, *args)

    assert verify("--rehash").returncode == 0
    for command in ("ls", "du"):  # they read the index, as without a bucket
        done = pullthrough(command, mirror.config_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "library/s3-verify" in pullthrough("ls", mirror.config_path).stdout
    # Bit rot in one object (same size), the other deleted behind the mirror's back.
    original = bucket_contents(s3_bucket)[first]
    rotten = bytes([original[0] ^ 1]) + original[1:]
    asyncio.run(_put_and_delete(s3_bucket, first, rotten, second))

    listed = verify()
    assert listed.returncode == 1
    assert f"missing from the bucket: {second}" in listed.stdout
    assert first not in listed.stdout  # same size: only a re-hash sees it
    rehashed = verify("--rehash")
    assert rehashed.returncode == 1
    assert f"corrupt {first} in the bucket" in rehashed.stdout + rehashed.stderr
    repaired = verify("--rehash", "--repair")
    assert repaired.returncode == 1
    assert f"removed {first}" in repaired.stdout and f"removed {second}" in repaired.stdout
    assert first not in bucket_contents(s3_bucket)
    assert verify("--rehash").returncode == 0

    # The next pull fetches both again, and the bucket is whole.
    mirror.start()
    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "again")
    assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "again"))
    assert upstream_proxy.count("GET", f"/blobs/{first}") == 1
    assert upstream_proxy.count("GET", f"/blobs/{second}") == 1
    wait_until(
        lambda: bucket_contents(s3_bucket).get(first) == original,
        timeout=20,
        message="the good bytes back in the bucket",
    )


async def _put_and_delete(bucket: S3Bucket, rewrite: str, data: bytes, delete: str) -> None:
    def key(digest: str) -> str:
        algorithm, _, hex_ = digest.partition(":")
        return f"{BLOBS}/{algorithm}/{hex_[:2]}/{hex_}/data"

    async with s3_client(bucket) as s3:
        await s3.put_object(Bucket=bucket.bucket, Key=key(rewrite), Body=data)
        await s3.delete_object(Bucket=bucket.bucket, Key=key(delete))


def test_the_s3_server_stopped_mid_upload_leaves_nothing_visible_and_no_orphan_after_the_sweep(
    own_s3_server: CephS3,
    image_factory: ImageFactory,
    upstream_proxy: RecordingProxy,
    proxy_factory,
    mirror_factory,
    tmp_path: Path,
) -> None:
    """The client's pull completes from the upstream's stream; the multipart upload the
    server's stop cut short is not a blob in the bucket, the mirror keeps nothing it cannot
    vouch for, and the stale-upload sweep aborts what the upload left."""
    front, bucket = bucket_behind_a_proxy(own_s3_server, proxy_factory)
    image = image_factory("library/s3-stopped", layers=(24 * MiB,))
    layer = image.source.layer_digests[0]
    storage = bucket.storage(rootdirectory="/stopped", chunksize="5MiB")  # 5 parts
    mirror = mirror_factory(upstream_proxy.url, config={"storage": storage})
    # The upload's parts (PUTs) wait at the proxy; its start (a POST) goes through.
    front.fault_path_contains = layer.removeprefix("sha256:")
    front.fault_methods = {"PUT"}
    front.stall_seconds = 3.0
    pull_dir(image.on(mirror.host), tmp_path / "served")
    assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "served"))
    wait_until(
        lambda: any(e.method == "POST" and "uploads" in e.query for e in front.requests()),
        timeout=30,
        message="the multipart upload of the layer started",
    )
    own_s3_server.stop()  # while its parts wait at the proxy
    front.clear_faults()
    wait_until(
        lambda: f"{layer} is not kept" in mirror.log_text(),
        timeout=120,
        message="the mirror gave the upload up",
    )
    assert layer not in mirror.stored_files()  # no local copy the index does not vouch for
    own_s3_server.start()
    assert layer not in bucket_contents(bucket, "stopped")

    async def sweep() -> tuple[list[str], int, list[str]]:
        uploads = BucketUploads(load_s3(storage, tmp_path / "s3.yml"))
        before = await pending_keys(bucket)
        aborted = await uploads.sweep(older_than=0)
        return before, aborted, await pending_keys(bucket)

    before, aborted, after = asyncio.run(sweep())
    assert any(layer.removeprefix("sha256:") in key for key in before), before
    assert aborted == len(before) and after == []

    # The next pull fetches the layer again, and this time the bucket keeps it.
    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "again")
    assert upstream_proxy.count("GET", f"/blobs/{layer}") == 1
    wait_until(
        lambda: layer in bucket_contents(bucket, "stopped"), timeout=30, message="layer stored"
    )


async def pending_keys(bucket: S3Bucket) -> list[str]:
    async with s3_client(bucket) as s3:
        listed = await s3.list_multipart_uploads(Bucket=bucket.bucket)
        return sorted(u["Key"] for u in listed.get("Uploads", []))


def load_s3(storage: dict[str, Any], where: Path) -> S3Config:
    """The mirror's reading of ``storage``, from a config file as it would have it."""
    where.write_text(yaml.safe_dump({"version": 0.1, "storage": storage}))
    config = load(where, environ={})
    assert config.s3 is not None
    return config.s3
