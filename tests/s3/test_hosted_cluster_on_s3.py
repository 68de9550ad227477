"""Hosted repositories on replicas that share a bucket and Redis, and no filesystem: a
push is seen by every replica as soon as it is acknowledged, and an upload's requests may
reach any replica (as behind a load balancer) while its bytes are on one."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from pullthrough.cluster.connection import key
from tests.cluster.redis_server import RedisServer
from tests.s3.test_mirror_on_s3 import bucket_contents, pullthrough
from tests.support import KiB
from tests.support.conformance import HOSTED_CONFIG, check_all_workflows, program
from tests.support.hosted import HOSTED_ACME as HOSTED
from tests.support.hosted import (
    digest_of,
    error_code,
    image_manifest,
    push_image,
    put_manifest,
)
from tests.support.images import blob_digests_in_dir, make_image, manifest_digest_in_dir, pull_dir
from tests.support.images import push as skopeo_push
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.s3, pytest.mark.slow]


def _at(replica: MirrorProcess, location: str) -> str:
    return f"{replica.url}{location}"


def test_an_upload_crossing_replicas_and_a_push_seen_by_every_replica(
    bucket_replicas: Any, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    a, b, c = bucket_replicas(upstream_proxy.url, 3, extra=HOSTED)
    layer = bytes(range(256)) * (3 * 1024)  # 768 KiB in three chunks
    start = http_request("POST", f"{a.url}/v2/acme/app/blobs/uploads/")
    assert start.status == 202, start.body
    location = start.header("Location") or ""
    # Each request of the session reaches another replica, as behind a load balancer.
    third = len(layer) // 3
    for replica, lo in ((b, 0), (c, third)):
        chunk = http_request(
            "PATCH",
            _at(replica, location),
            data=layer[lo : lo + third],
            headers={"Content-Range": f"{lo}-{lo + third - 1}"},
        )
        assert chunk.status == 202, chunk.body
        assert chunk.header("Range") == f"0-{lo + third - 1}"
        location = chunk.header("Location") or ""
    status = http_request("GET", _at(c, location))
    assert status.status == 204 and status.header("Range") == f"0-{2 * third - 1}"
    # A chunk out of order is refused by the replica holding the session, through another.
    wrong = http_request("PATCH", _at(b, location), data=b"x", headers={"Content-Range": "5-5"})
    assert wrong.status == 416 and error_code(wrong) == "RANGE_INVALID"
    done = http_request(
        "PUT",
        f"{_at(b, location)}?digest={digest_of(layer)}",
        data=layer[2 * third :],
        headers={"Content-Range": f"{2 * third}-{len(layer) - 1}"},
    )
    assert done.status == 201, done.body
    assert done.header("Docker-Content-Digest") == digest_of(layer)

    conf = b'{"architecture":"amd64","os":"linux"}'
    pushed = http_request(
        "POST", f"{c.url}/v2/acme/app/blobs/uploads/?digest={digest_of(conf)}", data=conf
    )
    assert pushed.status == 201, pushed.body
    manifest = image_manifest(digest_of(conf), len(conf), [(digest_of(layer), len(layer))])
    put = put_manifest(b.url, "acme/app", "v1", manifest)
    assert put.status == 201, put.body
    # Acknowledged through one replica: every replica answers with it at once.
    for replica in (a, b, c):
        tags = http_request("GET", f"{replica.url}/v2/acme/app/tags/list")
        assert json.loads(tags.body) == {"name": "acme/app", "tags": ["v1"]}, replica.url
        got = http_request("GET", f"{replica.url}/v2/acme/app/manifests/v1")
        assert got.status == 200 and got.body == manifest
        blob = http_request("GET", f"{replica.url}/v2/acme/app/blobs/{digest_of(layer)}")
        assert blob.status == 200 and blob.body == layer, replica.url
        # Held by acme/app only: another repository may not read it.
        other = http_request("HEAD", f"{replica.url}/v2/acme/other/blobs/{digest_of(layer)}")
        assert other.status == 404

    # Mounted through another replica than the push; deleted through a third.
    mount = http_request(
        "POST",
        f"{a.url}/v2/acme/copy/blobs/uploads/?mount={digest_of(layer)}&from=acme/app",
    )
    assert mount.status == 201, mount.body
    assert http_request("HEAD", f"{c.url}/v2/acme/copy/blobs/{digest_of(layer)}").status == 200
    gone = http_request("DELETE", f"{c.url}/v2/acme/app/manifests/v1")
    assert gone.status == 202, gone.body
    for replica in (a, b):
        missing = http_request("GET", f"{replica.url}/v2/acme/app/manifests/v1")
        assert missing.status == 404 and error_code(missing) == "MANIFEST_UNKNOWN"

    # skopeo pushes through one replica and pulls through the others.
    image = make_image(tmp_path / "layout", [300 * KiB, 20 * KiB], "hosted-cluster", ref="v2")
    digest = skopeo_push(image, a.host, "acme/tool", "v2")
    for i, replica in enumerate((b, c)):
        pull_dir(f"{replica.host}/acme/tool:v2", tmp_path / f"pulled-{i}")
        assert manifest_digest_in_dir(tmp_path / f"pulled-{i}") == digest
        assert set(blob_digests_in_dir(tmp_path / f"pulled-{i}")) == {
            *image.layer_digests,
            image.config_digest,
        }
    assert upstream_proxy.requests() == []  # hosted names never reach the upstream


def test_a_session_on_a_replica_that_died_is_unknown_and_a_new_one_works(
    bucket_replicas: Any, upstream_proxy: RecordingProxy
) -> None:
    a, b = bucket_replicas(upstream_proxy.url, 2, extra=HOSTED)
    start = http_request("POST", f"{a.url}/v2/acme/app/blobs/uploads/")
    location = start.header("Location") or ""
    a.kill()
    lost = http_request("PATCH", _at(b, location), data=b"bytes", headers={})
    assert lost.status == 404 and error_code(lost) == "BLOB_UPLOAD_UNKNOWN"
    data = b"pushed again"
    again = http_request(
        "POST", f"{b.url}/v2/acme/app/blobs/uploads/?digest={digest_of(data)}", data=data
    )
    assert again.status == 201, again.body
    assert http_request("GET", f"{b.url}/v2/acme/app/blobs/{digest_of(data)}").body == data


def test_tags_pushed_at_once_through_every_replica_are_all_kept(
    bucket_replicas: Any, upstream_proxy: RecordingProxy
) -> None:
    """Writes are serialized across the cluster: none is lost to another replica's copy."""
    group = bucket_replicas(upstream_proxy.url, 3, extra=HOSTED)
    manifest = push_image(group[0].url, "acme/app", b"one layer" * 1000)
    tags = [f"t{i}" for i in range(24)]
    statuses: dict[str, int] = {}

    def put(i: int, tag: str) -> None:
        statuses[tag] = put_manifest(group[i % 3].url, "acme/app", tag, manifest).status

    threads = [threading.Thread(target=put, args=(i, t)) for i, t in enumerate(tags)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert statuses == dict.fromkeys(tags, 201)
    for replica in group:
        listed = http_request("GET", f"{replica.url}/v2/acme/app/tags/list")
        assert sorted(json.loads(listed.body)["tags"]) == sorted(tags), replica.url


def test_gc_deletes_unreferenced_hosted_blobs_from_the_bucket_for_every_replica(
    bucket_replicas: Any,
    upstream_proxy: RecordingProxy,
    s3_bucket: Any,
    redis_server: RedisServer,
) -> None:
    extra = json.loads(json.dumps(HOSTED))
    extra["mirror"]["hosted"]["gc_grace"] = "0s"
    a, b, c = bucket_replicas(upstream_proxy.url, 3, extra=extra)
    layer, kept = b"unreferenced soon" * 4000, b"referenced still" * 4000
    manifests = {}
    for repo, data, tag in (("acme/old", layer, "v1"), ("acme/new", kept, "v1")):
        manifest = manifests[repo] = push_image(a.url, repo, data)
        put = put_manifest(b.url, repo, tag, manifest)
        assert put.status == 201, put.body
    old = digest_of(manifests["acme/old"])
    gone = http_request("DELETE", f"{c.url}/v2/acme/old/manifests/{old}")
    assert gone.status == 202, gone.body

    # gc takes the sweeper's turn, which a running replica holds: run with the replicas
    # stopped (their disks kept), then start them again. Their lease would lapse in 30 s
    # or more; it is dropped here instead.
    for replica in (a, b, c):
        replica.stop()
    redis.Redis(host="127.0.0.1", port=redis_server.port).delete(key("sweeper"))
    done = pullthrough("gc", c.config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"hosted: removed {digest_of(layer)} ({len(layer)} bytes)" in done.stdout, done.stdout
    left = bucket_contents(s3_bucket)
    assert digest_of(layer) not in left and digest_of(kept) in left
    # What gc changed is what every replica sees (their own copies are older); what it
    # kept is served, and a push after it lands on its version.
    for replica in (a, b, c):
        replica.start()
    for replica in (a, b, c):
        blob = http_request("GET", f"{replica.url}/v2/acme/old/blobs/{digest_of(layer)}")
        assert blob.status == 404, replica.url
        blob = http_request("GET", f"{replica.url}/v2/acme/new/blobs/{digest_of(kept)}")
        assert blob.status == 200 and blob.body == kept, replica.url
    again = push_image(c.url, "acme/old", layer)
    put = put_manifest(c.url, "acme/old", "v2", again)
    assert put.status == 201
    listed = http_request("GET", f"{a.url}/v2/acme/old/tags/list")
    assert json.loads(listed.body)["tags"] == ["v2"]
    shown = pullthrough("ls", a.config_path)
    assert shown.returncode == 0 and "acme/new" in shown.stdout and "acme/old" in shown.stdout


def test_the_oci_conformance_suite_through_a_load_balancer_over_three_replicas(
    bucket_replicas: Any,
    upstream_proxy: RecordingProxy,
    proxy_factory: Any,
    tmp_path: Path,
) -> None:
    """The whole distribution-spec suite, each request sent to the next of three replicas
    (so every upload's requests are spread over them, and every read follows a write made
    through another replica)."""
    program()
    group = bucket_replicas(upstream_proxy.url, 3, extra=HOSTED_CONFIG)
    balancer = proxy_factory(group[0].url)
    balancer.round_robin = [r.url for r in group]
    host = balancer.url.removeprefix("http://")
    check_all_workflows(host, tmp_path / "conformance", "hosted, 3 replicas on a bucket")
    assert upstream_proxy.requests() == []


def test_with_redis_down_pushes_are_refused_and_pulls_answered_from_each_copy(
    bucket_replicas: Any, upstream_proxy: RecordingProxy, redis_server: RedisServer
) -> None:
    """A write no other replica could see is refused (503 UNAVAILABLE), not accepted on
    one replica alone; what every replica already has is still served."""
    a, b = bucket_replicas(upstream_proxy.url, 2, extra=HOSTED)
    layer = b"pushed before the outage" * 1000
    manifest = push_image(a.url, "acme/app", layer)
    assert put_manifest(a.url, "acme/app", "v1", manifest).status == 201
    assert http_request("GET", f"{b.url}/v2/acme/app/manifests/v1").body == manifest
    redis_server.stop()
    refused = put_manifest(b.url, "acme/app", "v2", manifest)
    assert refused.status == 503 and error_code(refused) == "UNAVAILABLE", refused.body
    for replica in (a, b):
        got = http_request("GET", f"{replica.url}/v2/acme/app/manifests/v1")
        assert got.status == 200 and got.body == manifest, replica.url
        blob = http_request("GET", f"{replica.url}/v2/acme/app/blobs/{digest_of(layer)}")
        assert blob.status == 200 and blob.body == layer, replica.url
    redis_server.start()
    tags = http_request("GET", f"{a.url}/v2/acme/app/tags/list")
    assert json.loads(tags.body)["tags"] == ["v1"]  # the refused tag was never kept
