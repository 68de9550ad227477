"""Hosted repositories on storage.s3 (one process): a push is in the bucket before the
client hears 201, the hosted index outlives the disk, reads come from the bucket when the
local cache has nothing, and gc deletes what nothing references from the bucket."""

from __future__ import annotations

import copy
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.s3.conftest import S3Bucket
from tests.s3.test_mirror_on_s3 import bucket_contents, pullthrough
from tests.support import KiB, MiB
from tests.support.conformance import HOSTED_CONFIG, check_all_workflows, program
from tests.support.hosted import CONFIG_JSON, digest_of, push_image, put_manifest
from tests.support.images import blob_digests_in_dir, make_image, manifest_digest_in_dir, pull_dir
from tests.support.images import push as skopeo_push
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def hosted_on(bucket: S3Bucket, **s3: Any) -> dict[str, Any]:
    return {
        "storage": {**bucket.storage(**s3), "delete": {"enabled": True}},
        "mirror": {
            "hosted": {"repositories": ["acme"], "gc_grace": "0s"},
            "access": [
                {"repositories": ["**"]},
                {"repositories": ["acme/**"], "actions": ["pull", "push", "delete"]},
            ],
        },
    }


def test_a_push_is_in_the_bucket_when_acknowledged_and_outlives_the_disk(
    s3_bucket: S3Bucket, upstream_proxy: RecordingProxy, mirror_factory, tmp_path: Path
) -> None:
    config = hosted_on(s3_bucket)
    first = mirror_factory(upstream_proxy.url, config=config)
    image = make_image(tmp_path / "layout", [3 * MiB, 200 * KiB], "hosted-on-s3", ref="v1")
    digest = skopeo_push(image, first.host, "acme/app", "v1")
    assert digest == image.manifest_digest
    # Acknowledged means durable: every blob and the manifest are objects already, with
    # the bytes that were pushed.
    stored = bucket_contents(s3_bucket)
    layout_blobs = set(image.layer_digests) | {image.config_digest}
    assert layout_blobs | {digest} <= set(stored)
    for blob in layout_blobs | {digest}:
        assert digest_of(stored[blob]) == blob
    pull_dir(f"{first.host}/acme/app:v1", tmp_path / "first")
    assert manifest_digest_in_dir(tmp_path / "first") == digest

    # A crash (no shutdown snapshot), then a process on another, empty disk.
    first.kill()
    second = mirror_factory(upstream_proxy.url, config=config)
    assert second.root != first.root
    assert "hosted.db restored from the bucket's snapshot" in second.log_text()
    tags = http_request("GET", f"{second.url}/v2/acme/app/tags/list")
    assert json.loads(tags.body) == {"name": "acme/app", "tags": ["v1"]}
    # Nothing cached locally: a blob GET is a redirect to the bucket (the default), whose
    # object has the pushed bytes; skopeo follows it.
    layer = image.layer_digests[0]
    head = http_request("HEAD", f"{second.url}/v2/acme/app/blobs/{layer}")
    assert head.status == 200 and head.header("Content-Length") == str(image.layers[0].size)
    resp = http_request("GET", f"{second.url}/v2/acme/app/blobs/{layer}")
    assert resp.status == 307, resp.body
    with urllib.request.urlopen(resp.header("Location"), timeout=10) as got:
        assert digest_of(got.read()) == layer
    pull_dir(f"{second.host}/acme/app:v1", tmp_path / "second")
    assert manifest_digest_in_dir(tmp_path / "second") == digest
    assert set(blob_digests_in_dir(tmp_path / "second")) == layout_blobs
    # Provenance holds in the bucket too: another repository cannot read the layer, and a
    # mirrored name never reached the upstream for it.
    other = http_request("GET", f"{second.url}/v2/acme/other/blobs/{layer}")
    assert other.status == 404
    assert upstream_proxy.requests() == []


def test_streamed_from_the_bucket_when_redirects_are_off_and_gc_deletes_it_there(
    s3_bucket: S3Bucket, upstream_proxy: RecordingProxy, mirror_factory, tmp_path: Path
) -> None:
    config = hosted_on(s3_bucket, **{})
    config["storage"]["redirect"] = {"disable": True}
    first = mirror_factory(upstream_proxy.url, config=config)
    layer = bytes(range(256)) * (4 * 1024)
    manifest = push_image(first.url, "acme/app", layer)
    put = put_manifest(first.url, "acme/app", "v1", manifest)
    assert put.status == 201, put.body
    first.kill()

    second = mirror_factory(upstream_proxy.url, config=config)
    got = http_request("GET", f"{second.url}/v2/acme/app/blobs/{digest_of(layer)}")
    assert got.status == 200 and got.body == layer  # through this process, verified
    ranged = http_request(
        "GET",
        f"{second.url}/v2/acme/app/blobs/{digest_of(layer)}",
        headers={"Range": "bytes=10-19"},
    )
    assert ranged.status == 206 and ranged.body == layer[10:20]

    # Deleted, and then nothing references the blobs: gc removes them from the bucket.
    gone = http_request("DELETE", f"{second.url}/v2/acme/app/manifests/{digest_of(manifest)}")
    assert gone.status == 202, gone.body
    second.stop()
    assert digest_of(layer) in bucket_contents(s3_bucket)
    done = pullthrough("gc", second.config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"hosted: removed {digest_of(layer)} ({len(layer)} bytes)" in done.stdout, done.stdout
    left = bucket_contents(s3_bucket)
    assert digest_of(layer) not in left and digest_of(CONFIG_JSON) not in left
    assert hashlib.sha256(manifest).hexdigest() not in json.dumps(sorted(left))


@pytest.mark.slow
@pytest.mark.parametrize("redirect", [True, False], ids=["redirect", "streamed"])
def test_the_oci_conformance_suite_on_a_hosted_namespace_in_a_bucket(
    s3_bucket: S3Bucket,
    upstream_proxy: RecordingProxy,
    mirror_factory,
    tmp_path: Path,
    redirect: bool,
) -> None:
    """Every workflow of the distribution-spec suite (push, pull, discovery, management,
    referrers, sha512) with the bucket as the store: blob GETs answered by a redirect to
    it, or streamed from it."""
    program()
    config = hosted_on(s3_bucket)
    config["mirror"] = copy.deepcopy(HOSTED_CONFIG["mirror"])
    if not redirect:
        config["storage"]["redirect"] = {"disable": True}
    mirror = mirror_factory(upstream_proxy.url, config=config)
    check_all_workflows(mirror.host, tmp_path / "conformance", "hosted namespace on S3")
    assert upstream_proxy.requests() == []
