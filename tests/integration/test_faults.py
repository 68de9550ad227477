"""The upstream goes away, lies, or refuses: the mirror keeps serving what it has,
fails fast and clearly for what it has not, and never stores or completes bad bytes."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from pathlib import Path

import pytest

from tests.support import MiB
from tests.support.images import manifest_digest_in_dir, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


def _error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


def test_cached_tag_and_digest_still_pull_when_the_upstream_is_down(
    registry_factory,
    image_factory,
    mirror_factory,
    tmp_path: Path,
) -> None:
    private_upstream = registry_factory()
    cached = image_factory("library/keep", registry=private_upstream)
    uncached = image_factory("library/never-pulled", registry=private_upstream)
    mirror = mirror_factory(private_upstream.url)
    pull_dir(cached.on(mirror.host), tmp_path / "warm")

    private_upstream.stop()

    pull_dir(cached.on(mirror.host), tmp_path / "by-tag")
    assert manifest_digest_in_dir(tmp_path / "by-tag") == cached.digest
    pull_dir(cached.on(mirror.host, by_digest=True), tmp_path / "by-digest")
    assert manifest_digest_in_dir(tmp_path / "by-digest") == cached.digest
    assert "from cache (stale" in mirror.log_text()

    began = time.monotonic()
    failed = pull_dir(uncached.on(mirror.host), tmp_path / "cold", check=False, timeout=30)
    assert failed.returncode != 0
    assert time.monotonic() - began < 10
    assert "503" in failed.stderr

    resp = http_request("GET", f"{mirror.url}/v2/{uncached.repo}/manifests/{uncached.tag}")
    assert resp.status == 503
    assert _error_code(resp.body) == "UNAVAILABLE"
    assert "could not be reached" in json.loads(resp.body)["errors"][0]["message"]
    blob = next(iter(uncached.blob_digests))
    resp = http_request("GET", f"{mirror.url}/v2/{uncached.repo}/blobs/{blob}")
    assert resp.status == 503

    private_upstream.start()  # no rest: the next pull probes and finds it back
    pull_dir(uncached.on(mirror.host), tmp_path / "recovered")
    assert manifest_digest_in_dir(tmp_path / "recovered") == uncached.digest


def test_upstream_404_for_a_tag_is_authoritative(
    images,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    url = f"{mirror.url}/v2/{images.oci_small.repo}/manifests/{images.oci_small.tag}"
    assert http_request("GET", url).status == 200
    upstream_proxy.fail_status = 404
    resp = http_request("GET", url)
    assert resp.status == 404
    assert _error_code(resp.body) == "MANIFEST_UNKNOWN"


def test_rate_limited_upstream_serves_cached_tag_and_passes_429_on_for_the_rest(
    images,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    cached = f"{mirror.url}/v2/{images.oci_small.repo}/manifests/{images.oci_small.tag}"
    assert http_request("GET", cached).status == 200
    upstream_proxy.fail_status = 429
    stale = http_request("GET", cached)
    assert stale.status == 200
    assert stale.header("Docker-Content-Digest") == images.oci_small.digest
    cold = http_request("GET", f"{mirror.url}/v2/{images.multi.repo}/manifests/v1")
    assert cold.status == 429
    assert _error_code(cold.body) == "TOOMANYREQUESTS"


def test_corrupt_blob_fails_the_transfer_and_is_never_stored(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    tmp_path: Path,
) -> None:
    image = image_factory("library/corrupt", layers=(4 * MiB,))
    layer = image.source.layer_digests[0]
    upstream_proxy.corrupt_blobs = True

    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", f"/v2/{image.repo}/blobs/{layer}")
    resp = conn.getresponse()
    assert resp.status == 200  # headers went out before the corruption could be known
    size = int(resp.getheader("Content-Length", "0"))
    assert size == image.source.blob_file(layer).stat().st_size
    with pytest.raises((http.client.IncompleteRead, ConnectionError)) as cut:
        resp.read()
    if isinstance(cut.value, http.client.IncompleteRead):
        assert len(cut.value.partial) < size  # never the last byte of unverified bytes
    conn.close()

    failed = pull_dir(image.on(mirror.host), tmp_path / "bad", check=False, timeout=60)
    assert failed.returncode != 0
    assert layer not in mirror.stored_files()
    # The fetch skopeo started goes on after skopeo gave up; once it ends, no temp is left.
    deadline = time.monotonic() + 20
    while list((mirror.root / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((mirror.root / "tmp").iterdir()) == []
    assert layer not in mirror.stored_files()
    assert "do not match that digest" in mirror.log_text()

    upstream_proxy.corrupt_blobs = False
    pull_dir(image.on(mirror.host), tmp_path / "good")
    data = (tmp_path / "good" / layer.split(":")[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer
    assert layer in mirror.stored_files()


def test_connection_dropped_mid_blob_is_resumed_with_range_requests(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    image = image_factory("library/dropped", layers=(8 * MiB,))
    layer = image.source.layer_digests[0]
    upstream_proxy.drop_after = 3 * MiB  # every upstream response breaks after 3 MiB

    resp = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{layer}", timeout=30)
    assert resp.status == 200
    assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == layer

    gets = upstream_proxy.requests(method="GET", path_contains=layer)
    assert len(gets) >= 3  # 8 MiB through connections that break every 3 MiB
    assert gets[0].request_header("Range") == []
    offsets = [
        int(g.request_header("Range")[0].removeprefix("bytes=").rstrip("-")) for g in gets[1:]
    ]
    # Each resume starts where the bytes kept so far end: later, never from zero. (Bytes
    # the client library had buffered when the connection broke are fetched again.)
    assert offsets == sorted(offsets) and offsets[0] > 0
    assert all(off <= MiB * 3 * (n + 1) for n, off in enumerate(offsets))
    assert layer in mirror.stored_files()


def test_a_stored_blob_that_rotted_on_disk_is_never_served_as_a_success(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    # Default settings: the flip changes the file's stat, so the next read hashes it
    # (tests/integration/test_changed_on_disk.py has the rest of that story).
    mirror = mirror_factory(upstream_proxy.url)
    image = image_factory("library/rotten", layers=(3 * MiB,))
    layer = image.source.layer_digests[0]
    url = f"{mirror.url}/v2/{image.repo}/blobs/{layer}"
    assert hashlib.sha256(http_request("GET", url).body).hexdigest() == layer.split(":")[1]
    stored = mirror.stored_files()[layer]
    with stored.open("r+b") as f:  # one flipped bit in the middle, as a bad disk would do
        f.seek(MiB)
        byte = f.read(1)
        f.seek(MiB)
        f.write(bytes([byte[0] ^ 1]))

    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", f"/v2/{image.repo}/blobs/{layer}")
    resp = conn.getresponse()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    conn.close()
    assert layer not in mirror.stored_files()
    assert "does not match its digest" in mirror.log_text()

    upstream_proxy.reset()
    again = http_request("GET", url)
    assert hashlib.sha256(again.body).hexdigest() == layer.split(":")[1]
    assert len(upstream_proxy.blob_gets()) == 1  # fetched once more, and stored again
    assert layer in mirror.stored_files()


def test_a_stored_manifest_that_rotted_on_disk_is_fetched_again_not_served(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(upstream_proxy.url)
    image = image_factory("library/rotten-manifest")
    url = f"{mirror.url}/v2/{image.repo}/manifests/{image.digest}"
    headers = {"Accept": image.media_type}
    assert http_request("GET", url, headers=headers).body == image.raw_manifest
    # A restart empties the mirror's memory of recent manifests: the next read is the disk's.
    mirror.stop()
    stored = mirror.stored_files()[image.digest]
    rotten = bytearray(stored.read_bytes())
    rotten[len(rotten) // 2] ^= 1
    stored.write_bytes(rotten)
    mirror.start()

    upstream_proxy.reset()
    for _ in range(2):  # by digest, then by tag (the tag's HEAD names the same digest)
        got = http_request("GET", url, headers=headers)
        assert got.status == 200
        assert got.body == image.raw_manifest
        url = f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}"
    assert "no longer matches its digest" in mirror.log_text()
    assert upstream_proxy.count("GET", f"/manifests/{image.digest}") == 1  # fetched again once
    assert mirror.stored_files()[image.digest].read_bytes() == image.raw_manifest


def test_a_verified_blob_reaches_its_client_whole_even_when_it_cannot_be_kept(
    image_factory,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    """The last byte goes out once the digest matched; keeping the file (fsync, rename)
    comes after and only decides whether the next request reads it or fetches again."""
    image = image_factory("library/unkept", layers=(4 * MiB,))
    layer = image.source.layer_digests[0]
    algorithm, hex_ = layer.split(":")
    # A file where the blob's directory should be: the rename into place fails.
    shard = mirror.root / "blobs" / algorithm / hex_[:2]
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(b"in the way")

    url = f"{mirror.url}/v2/{image.repo}/blobs/{layer}"
    first = http_request("GET", url, timeout=30)
    assert first.status == 200
    assert "sha256:" + hashlib.sha256(first.body).hexdigest() == layer
    assert layer not in mirror.stored_files()

    shard.unlink()
    second = http_request("GET", url, timeout=30)
    assert second.body == first.body
    assert len(upstream_proxy.requests(method="GET", path_contains=layer)) == 2  # not kept
    deadline = time.monotonic() + 10  # stored just after the last byte went out
    while layer not in mirror.stored_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert layer in mirror.stored_files()


def test_a_fetched_blob_changed_on_disk_before_a_slow_reader_is_done_is_not_completed(
    image_factory, mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    """A client reading a cold blob slowly is still being sent the fetch's file when the
    fetch has put it in the store; a change to the file from then on (bit rot, a careless
    hand) must not reach the client as a success: its last byte is held until the file is
    checked again."""
    mirror = mirror_factory(upstream_proxy.url)
    size = 48 * MiB
    image = image_factory("library/rot-under-reader", layers=(size,))
    layer = image.source.layer_digests[0]
    conn = http.client.HTTPConnection(mirror.host, timeout=30)
    conn.request("GET", f"/v2/{image.repo}/blobs/{layer}")
    resp = conn.getresponse()
    assert resp.status == 200
    length = int(resp.getheader("Content-Length", "0"))
    first = resp.read(MiB)  # then read nothing: the fetch goes on without this reader
    stored = mirror.stored_files(settle=30)[layer]  # the download ended: the file is in place
    with stored.open("r+b") as f:  # one flipped bit near the end, not yet sent to the client
        f.seek(length - MiB)
        byte = f.read(1)
        f.seek(length - MiB)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises((http.client.IncompleteRead, ConnectionError)) as cut:
        resp.read()
    conn.close()
    if isinstance(cut.value, http.client.IncompleteRead):
        assert len(first) + len(cut.value.partial) < length
    assert "does not match its digest" in mirror.log_text()
    assert layer not in mirror.stored_files()  # removed: the next request fetches it again

    upstream_proxy.reset()
    again = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{layer}", timeout=60)
    assert hashlib.sha256(again.body).hexdigest() == layer.split(":")[1]
    assert len(upstream_proxy.blob_gets()) == 1
