"""Replicas that share a bucket and Redis, and no filesystem: each blob is fetched from the
upstream once for the whole cluster, every client gets verified bytes, and a replica that
joins with an empty disk serves what the bucket holds."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pullthrough.cluster.claims import CLAIM_TTL
from pullthrough.cluster.peers import PeerKey
from tests.cluster.pulling import Pull, get_blob, pull
from tests.s3.conftest import PEER_SECRET, S3Bucket
from tests.s3.test_mirror_on_s3 import bucket_behind_a_proxy
from tests.support import MiB
from tests.support.images import ImageFactory, blob_digests_in_dir, pull_dir
from tests.support.net import wait_until
from tests.support.proxy import RecordingProxy, exchanges_summary
from tests.support.s3_server import CephS3

pytestmark = [pytest.mark.integration, pytest.mark.s3, pytest.mark.slow]

# Longer than a claim lives without being renewed (CLAIM_TTL), with room to ask meanwhile.
UPLOAD_STALL = CLAIM_TTL + 10.0


def test_replicas_on_one_bucket_fetch_each_blob_once(
    image_factory: ImageFactory,
    bucket_replicas: Any,
    upstream_proxy: RecordingProxy,
    s3_bucket: S3Bucket,
    tmp_path: Path,
) -> None:
    image = image_factory("library/s3-clustered", layers=(32 * MiB, 4 * MiB))
    group = bucket_replicas(upstream_proxy.url)
    roots = {r.root for r in group}
    assert len(roots) == 3  # every replica its own disk
    upstream_proxy.reset()
    upstream_proxy.blob_rate = 32 * MiB  # the big layer takes a second: the pulls overlap

    results = [Pull(group[i % 3].host) for i in range(9)]
    start = threading.Event()
    threads = [threading.Thread(target=pull, args=(r.host, image, r, start)) for r in results]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(180)
    assert [r.error for r in results if r.error] == []
    wanted = {image.digest, *image.blob_digests}
    assert all(set(r.verified) == wanted for r in results)
    summary = exchanges_summary(upstream_proxy.requests())
    for digest in image.blob_digests:
        assert upstream_proxy.count("GET", f"/blobs/{digest}") == 1, summary
    big = image.source.layer_digests[0]
    streamed = [r for r in group if f"streaming {big} from http://" in r.log_text()]
    assert len(streamed) == 2, "the two replicas that lost the race streamed from the owner"
    assert all("waiting for the fetch of" not in r.log_text() for r in group)

    # A replica that joins with an empty disk reads the bucket: the upstream is not asked.
    upstream_proxy.reset()
    upstream_proxy.blob_rate = None
    (late,) = bucket_replicas(upstream_proxy.url, 1, stream=False)
    assert not late.stored_files(settle=0)
    pull_dir(image.on(late.host), tmp_path / "late")
    assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "late"))
    assert upstream_proxy.count("GET", "/blobs/") == 0


def test_when_the_fetching_replica_dies_another_fetches_and_every_client_completes(
    image_factory: ImageFactory,
    bucket_replicas: Any,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/s3-owner-dies", layers=(48 * MiB,))
    group = bucket_replicas(upstream_proxy.url)
    layer = image.source.layer_digests[0]
    upstream_proxy.reset()
    upstream_proxy.blob_rate = 8 * MiB  # six seconds: time to kill the owner half-way

    owner_pull = Pull(group[0].host)
    first = threading.Thread(target=pull, args=(group[0].host, image, owner_pull))
    first.start()
    wait_until(  # (the proxy records an exchange when it ends: the log says it sooner)
        lambda: f"cache miss: blob {layer}" in group[0].log_text(),
        timeout=30,
        message="replica 0 fetching the layer",
    )
    waiting = [Pull(r.host) for r in group[1:] for _ in range(2)]
    threads = [threading.Thread(target=pull, args=(p.host, image, p)) for p in waiting]
    for t in threads:
        t.start()
    wait_until(
        lambda: all(f"streaming {layer} from {group[0].url}" in r.log_text() for r in group[1:]),
        timeout=30,
        message="replicas 1 and 2 streaming from replica 0",
    )
    group[0].kill()  # SIGKILL: its claim lapses, its partial file dies with its disk
    upstream_proxy.blob_rate = None
    for t in [first, *threads]:
        t.join(180)
    assert owner_pull.error  # its client lost the connection with it
    assert [p.error for p in waiting if p.error] == []
    assert all(layer in p.verified for p in waiting)
    # The dead replica's download, then one more by whichever replica took the claim.
    assert upstream_proxy.count("GET", f"/blobs/{layer}") == 2, exchanges_summary(
        upstream_proxy.requests()
    )
    shutil.rmtree(group[0].root, ignore_errors=True)


def test_an_upload_that_outlasts_the_claim_keeps_it_and_the_blob_is_fetched_once(
    image_factory: ImageFactory,
    bucket_replicas: Any,
    upstream_proxy: RecordingProxy,
    s3_server: CephS3,
    proxy_factory: Any,
) -> None:
    """The owner's client has its bytes, then the owner's upload of them to the bucket
    takes longer than a claim lives unrenewed: the owner keeps renewing it, so a replica
    asked for the blob meanwhile waits for (or streams from) the owner instead of taking
    the claim over and asking the upstream again."""
    front, bucket = bucket_behind_a_proxy(s3_server, proxy_factory)
    image = image_factory("library/s3-slow-upload", layers=(6 * MiB,))
    layer = image.source.layer_digests[0]
    first, second = bucket_replicas(upstream_proxy.url, 2, bucket=bucket)
    upstream_proxy.reset()
    front.fault_path_contains = layer.removeprefix("sha256:")  # only the layer's object
    front.stall_seconds = UPLOAD_STALL
    began = time.monotonic()
    owner_pull = Pull(first.host)
    pull(first.host, image, owner_pull)
    assert not owner_pull.error and layer in owner_pull.verified
    assert time.monotonic() - began < UPLOAD_STALL  # served before the upload ended
    # Past the claim's time to live, the upload still stalled at the bucket.
    time.sleep(CLAIM_TTL + 1.5)
    assert f"stored {layer}" in first.log_text()
    assert not upload_done(front, layer)
    late_pull = Pull(second.host)
    pull(second.host, image, late_pull)
    assert not late_pull.error and layer in late_pull.verified
    # Not from the bucket, which has no copy yet: from the replica that fetched it.
    assert not upload_done(front, layer)
    assert f"streaming {layer} from {first.url}" in second.log_text()
    assert upstream_proxy.count("GET", f"/blobs/{layer}") == 1, exchanges_summary(
        upstream_proxy.requests()
    )
    wait_until(lambda: upload_done(front, layer), timeout=30, message="the upload ended")


def upload_done(front: RecordingProxy, layer: str) -> bool:
    """Whether a write of the layer's object reached the bucket and was answered."""
    return any(
        e.method == "PUT" and layer.removeprefix("sha256:") in e.path and e.status == 200
        for e in front.requests()
    )


def test_the_peer_path_answers_only_requests_signed_with_the_secret(
    image_factory: ImageFactory, bucket_replicas: Any, upstream_proxy: RecordingProxy
) -> None:
    """What replicas stream from each other is not a way around the registry API: a
    client without the secret gets 401 and learns nothing, not even whether the replica
    has the blob; without a secret the path does not exist."""
    image = image_factory("library/s3-peer-path", layers=(1 * MiB,))
    layer = image.source.layer_digests[0]
    (replica,) = bucket_replicas(upstream_proxy.url, 1)
    pull(replica.host, image, done := Pull(replica.host))
    assert not done.error
    path = f"/_pullthrough/peer/blobs/docker.io/{layer}"
    absent = "sha256:" + "0" * 64
    good = PeerKey(PEER_SECRET)
    for headers in (
        {},
        {"Authorization": PeerKey("not the replicas' secret").sign("docker.io", layer)},
        {"Authorization": good.sign("docker.io", absent)},  # signed for another digest
        {"Authorization": good.sign("ghcr.io", layer)},  # for another upstream
    ):
        status, body = http_get(replica.host, path, headers)
        assert status == 401, headers
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    status, body = http_get(
        replica.host,
        f"/_pullthrough/peer/blobs/docker.io/{absent}",
        {"Authorization": good.sign("docker.io", absent)},
    )
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    status, body = http_get(replica.host, path, {"Authorization": good.sign("docker.io", layer)})
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == layer

    (without,) = bucket_replicas(upstream_proxy.url, 1, peers=False)
    status, _ = http_get(without.host, path, {"Authorization": good.sign("docker.io", layer)})
    assert status == 404


def http_get(host: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_running_fetch_is_streamed_to_another_repository_only_if_the_upstream_holds_it_there(
    image_factory: ImageFactory, bucket_replicas: Any, upstream_proxy: RecordingProxy
) -> None:
    """The owner fetches a layer for one repository; a client asks another replica for the
    same digest in a repository the upstream does not hold it in. The digest alone opens
    nothing (mirror.provenance): that replica asks the upstream, gets no, answers 404, and
    never reads the owner's bytes."""
    image = image_factory("library/s3-owner-repo", layers=(16 * MiB,))
    layer = image.source.layer_digests[0]
    owner, other = bucket_replicas(upstream_proxy.url, 2)
    upstream_proxy.reset()
    upstream_proxy.blob_rate = 4 * MiB  # four seconds: the second request comes meanwhile
    got: list[tuple[int, str, int]] = []
    first = threading.Thread(target=lambda: got.append(get_blob(owner.host, image.repo, layer)))
    first.start()
    wait_until(
        lambda: f"cache miss: blob {layer}" in owner.log_text(),
        timeout=30,
        message="the owner fetching the layer",
    )
    status, _, _ = get_blob(other.host, "library/s3-not-there", layer)
    first.join(60)
    assert status == 404
    assert got and got[0][:2] == (200, layer)
    assert upstream_proxy.count("HEAD", f"/v2/library/s3-not-there/blobs/{layer}") == 1
    assert upstream_proxy.count("GET", f"/v2/library/s3-not-there/blobs/{layer}") == 0
    assert upstream_proxy.count("GET", f"/blobs/{layer}") == 1  # the owner's
    assert f"streaming {layer}" not in other.log_text()
