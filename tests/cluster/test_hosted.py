"""Hosted repositories in cluster mode: replicas share the store, ``hosted.db`` and the upload
sessions, so a push through one replica is pulled through any other at once."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from tests.cluster.conftest import ReplicaFactory
from tests.support import KiB
from tests.support.hosted import HOSTED_ACME, OCI_MANIFEST, digest_of, error_code, image_manifest
from tests.support.images import ImageFactory
from tests.support.mirror import MirrorProcess
from tests.support.net import HTTPResponse, http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]

HOSTED = HOSTED_ACME




def _monolithic(replica: MirrorProcess, repo: str, data: bytes) -> HTTPResponse:
    url = f"{replica.url}/v2/{repo}/blobs/uploads/?digest={digest_of(data)}"
    return http_request("POST", url, data=data, timeout=60)


def _open_session(replica: MirrorProcess, repo: str) -> str:
    resp = http_request("POST", f"{replica.url}/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, resp.body
    return resp.header("Location") or ""


def _patch(replica: MirrorProcess, location: str, data: bytes, start: int) -> HTTPResponse:
    headers = {"Content-Range": f"{start}-{start + len(data) - 1}"}
    return http_request("PATCH", f"{replica.url}{location}", data=data, headers=headers, timeout=60)


def _close(replica: MirrorProcess, location: str, data: bytes) -> HTTPResponse:
    sep = "&" if "?" in location else "?"
    return http_request("PUT", f"{replica.url}{location}{sep}digest={digest_of(data)}", timeout=60)


def _chunked(
    replicas: list[MirrorProcess], repo: str, data: bytes, chunk: int = 256 * KiB
) -> HTTPResponse:
    """A session upload whose requests go round ``replicas`` (POST, PATCHes, PUT)."""
    location = _open_session(replicas[0], repo)
    turn = 1
    for start in range(0, len(data), chunk):
        replica = replicas[turn % len(replicas)]
        resp = _patch(replica, location, data[start : start + chunk], start)
        assert resp.status == 202, resp.body
        location = resp.header("Location") or location
        turn += 1
    return _close(replicas[turn % len(replicas)], location, data)




def _stored(replica: MirrorProcess, digest: str) -> list[str]:
    """Every file in the shared store named for ``digest``."""
    return sorted(str(p) for p in (replica.root / "blobs").glob(f"*/*/{digest.split(':')[1]}"))


def test_a_push_through_one_replica_is_pulled_through_the_other_at_once(
    replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    a, b = replicas(upstream_proxy.url, n=2, config=HOSTED)
    config = b'{"architecture":"amd64","os":"linux"}'
    layer1, layer2 = os.urandom(300 * KiB), os.urandom(700 * KiB)
    assert _monolithic(a, "acme/app", config).status == 201
    assert _monolithic(a, "acme/app", layer1).status == 201
    assert _chunked([a], "acme/app", layer2).status == 201
    manifest = image_manifest(
        digest_of(config),
        len(config),
        [(digest_of(layer1), len(layer1)), (digest_of(layer2), len(layer2))],
    )
    put = http_request(
        "PUT",
        f"{a.url}/v2/acme/app/manifests/v1",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status == 201, put.body
    assert put.header("Docker-Content-Digest") == digest_of(manifest)

    # At once, through the other replica: no wait, no retry.
    by_tag = http_request("GET", f"{b.url}/v2/acme/app/manifests/v1")
    assert by_tag.status == 200, by_tag.body
    assert by_tag.body == manifest
    assert by_tag.header("Docker-Content-Digest") == digest_of(manifest)
    by_digest = http_request("GET", f"{b.url}/v2/acme/app/manifests/{digest_of(manifest)}")
    assert by_digest.status == 200 and by_digest.body == manifest
    for data in (config, layer1, layer2):
        blob = http_request("GET", f"{b.url}/v2/acme/app/blobs/{digest_of(data)}", timeout=30)
        assert blob.status == 200 and blob.header("Docker-Content-Digest") == digest_of(data)
        assert digest_of(blob.body) == digest_of(data)
    tags = http_request("GET", f"{b.url}/v2/acme/app/tags/list")
    assert json.loads(tags.body) == {"name": "acme/app", "tags": ["v1"]}
    assert upstream_proxy.requests() == []  # a hosted name never reaches the upstream


def test_the_same_blob_pushed_through_two_replicas_at_once_is_one_correct_file(
    replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    a, b = replicas(upstream_proxy.url, n=2, config=HOSTED)
    for round_ in range(4):  # bounded: four rounds of four concurrent pushes
        data = os.urandom(3 * 1024 * KiB + round_)
        answers: list[int] = []

        def push(
            kind: str, replica: MirrorProcess, data: bytes = data, answers: list[int] = answers
        ) -> None:
            if kind == "monolithic":
                answers.append(_monolithic(replica, "acme/same", data).status)
            else:
                others = [replica, b if replica is a else a]
                answers.append(_chunked(others, "acme/same", data).status)

        threads = [
            threading.Thread(target=push, args=(kind, replica))
            for kind in ("monolithic", "chunked")
            for replica in (a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert answers == [201] * 4
        files = _stored(a, digest_of(data))
        assert len(files) == 1
        with open(files[0], "rb") as f:
            assert digest_of(f.read()) == digest_of(data)
        for replica in (a, b):
            got = http_request("GET", f"{replica.url}/v2/acme/same/blobs/{digest_of(data)}")
            assert got.status == 200 and digest_of(got.body) == digest_of(data)
    assert list((a.root / "uploads").iterdir()) == []  # every session ended


def test_a_tag_deleted_on_one_replica_is_gone_on_the_other(
    replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    a, b = replicas(upstream_proxy.url, n=2, config=HOSTED)
    config = b'{"os":"linux"}'
    assert _monolithic(a, "acme/app", config).status == 201
    manifest = image_manifest(digest_of(config), len(config), [])
    for tag in ("v1", "v2"):
        put = http_request(
            "PUT",
            f"{b.url}/v2/acme/app/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert put.status == 201, put.body
    assert http_request("DELETE", f"{a.url}/v2/acme/app/manifests/v1").status == 202
    gone = http_request("GET", f"{b.url}/v2/acme/app/manifests/v1")
    assert gone.status == 404 and error_code(gone) == "MANIFEST_UNKNOWN"
    assert http_request("GET", f"{b.url}/v2/acme/app/manifests/v2").status == 200
    tags = http_request("GET", f"{b.url}/v2/acme/app/tags/list")
    assert json.loads(tags.body)["tags"] == ["v2"]
    digest = digest_of(manifest)
    assert http_request("DELETE", f"{b.url}/v2/acme/app/manifests/{digest}").status == 202
    for replica in (a, b):
        resp = http_request("GET", f"{replica.url}/v2/acme/app/manifests/v2")
        assert resp.status == 404 and error_code(resp) == "MANIFEST_UNKNOWN"


def test_an_upload_started_on_one_replica_continues_on_the_other(
    replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    a, b = replicas(upstream_proxy.url, n=2, config=HOSTED)
    data = os.urandom(1024 * KiB)
    assert _chunked([a, b], "acme/app", data, chunk=200 * KiB).status == 201
    for replica in (a, b):
        got = http_request("GET", f"{replica.url}/v2/acme/app/blobs/{digest_of(data)}")
        assert got.status == 200 and got.body == data
    # A session is one repository's, whichever replica is asked.
    location = _open_session(b, "acme/app")
    status = http_request("GET", f"{a.url}{location}")
    assert status.status == 204 and status.header("Range") == "0-0"
    elsewhere = http_request("GET", f"{a.url}{location.replace('acme/app', 'acme/other')}")
    assert elsewhere.status == 404 and error_code(elsewhere) == "BLOB_UPLOAD_UNKNOWN"
    assert http_request("DELETE", f"{a.url}{location}").status == 204
    assert http_request("GET", f"{b.url}{location}").status == 404


def test_a_chunk_arriving_through_two_replicas_at_once_is_refused_not_mixed(
    replicas: ReplicaFactory, upstream_proxy: RecordingProxy
) -> None:
    a, b = replicas(upstream_proxy.url, n=2, config=HOSTED)
    first, second = os.urandom(512 * KiB), os.urandom(64 * KiB)
    location = _open_session(a, "acme/app")
    # A chunk through A that is still arriving (half its body sent)...
    slow = socket.create_connection(("127.0.0.1", a.port), timeout=30)
    try:
        slow.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: {a.host}\r\n"
            f"Content-Range: 0-{len(first) - 1}\r\nContent-Length: {len(first)}\r\n\r\n".encode()
            + first[: len(first) // 2]
        )
        deadline = time.monotonic() + 10
        data_file = a.root / "uploads" / f"{location.rsplit('/', 1)[1]}.data"
        while data_file.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        # ...while another chunk, and then the end of the upload, come through B.
        other = _patch(b, location, second, 0)
        assert other.status in (409, 416), other.body
        assert error_code(other) in ("BLOB_UPLOAD_INVALID", "RANGE_INVALID")
        assert other.header("Location") == location and other.header("Range")
        early = _close(b, location, first)
        assert early.status in (400, 409, 416), early.body
        assert error_code(early) in ("BLOB_UPLOAD_INVALID", "RANGE_INVALID", "DIGEST_INVALID")
        slow.sendall(first[len(first) // 2 :])
        reply = slow.recv(4096)
        assert reply.startswith(b"HTTP/1.1 202"), reply[:200]
    finally:
        slow.close()
    done = _close(b, location, first)
    assert done.status == 201, done.body
    got = http_request("GET", f"{a.url}/v2/acme/app/blobs/{digest_of(first)}")
    assert got.status == 200 and got.body == first


def test_a_blob_pushed_through_one_replica_is_not_evicted_by_another(
    replicas: ReplicaFactory, upstream_proxy: RecordingProxy, image_factory: ImageFactory
) -> None:
    image = image_factory("library/base", layers=(64 * KiB,))
    config = json.loads(json.dumps(HOSTED))
    config["mirror"].update({"gc_interval": "0.2s"})
    config["proxy"] = {"ttl": "1s"}
    (b,) = replicas(upstream_proxy.url, n=1, config=config)
    deadline = time.monotonic() + 20
    while "sweeps the shared store now" not in b.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    (a,) = replicas(upstream_proxy.url, n=1, config=config)  # B holds the sweeper's lease
    layer = sorted(image.blob_digests)[0]
    mirrored = http_request("GET", f"{b.url}/v2/{image.repo}/blobs/{layer}", timeout=30)
    assert mirrored.status == 200
    # The same bytes pushed to a hosted repository through A (a base layer, say): the
    # cached copy's entry expires a second later, and B's sweeper removes expired content.
    assert _monolithic(a, "acme/app", mirrored.body).status == 201
    deadline = time.monotonic() + 20
    while "1 digest(s) held" not in b.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    for replica in (a, b):
        got = http_request("GET", f"{replica.url}/v2/acme/app/blobs/{layer}", timeout=30)
        assert got.status == 200 and got.body == mirrored.body
