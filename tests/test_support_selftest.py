"""Self-tests for tests/support: real docker-registry, skopeo and the recording proxy."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support import KiB, MiB
from tests.support.images import (
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    ImageSet,
    PushedImage,
    blob_digests_in_dir,
    fetch_manifest,
    make_image,
    make_index,
    manifest_digest_in_dir,
    publish,
    pull_dir,
)
from tests.support.net import http_request, wait_until
from tests.support.proxy import RecordingProxy, exchanges_summary
from tests.support.registry import Registry, RegistryError, RegistryFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _pulled_digests(ref: str, dest: Path, *, all: bool = False) -> tuple[str, set[str]]:
    pull_dir(ref, dest, all=all)
    return manifest_digest_in_dir(dest), set(blob_digests_in_dir(dest))


def _expected(img: PushedImage) -> set[str]:
    return set(img.blob_digests) | set(img.child_digests)


def test_make_image_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a", [4 * KiB, 1], seed=7)
    b = make_image(tmp_path / "b", [4 * KiB, 1], seed=7)
    c = make_image(tmp_path / "c", [4 * KiB, 1])
    assert a.manifest_digest == b.manifest_digest
    assert a.layer_digests == b.layer_digests
    assert c.manifest_digest != a.manifest_digest
    assert a.layer_sizes[0] > 4 * KiB  # tar header + padding around the random file
    ix = make_index(tmp_path / "ix", seed=1)
    assert len(set(ix.child_manifest_digests)) == 2
    assert ix.image_for("arm64").architecture == "arm64"


@pytest.mark.slow
def test_make_image_200mib_layer_is_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    img = make_image(tmp_path / "big", [200 * MiB], seed="big")
    assert time.monotonic() - started < 10
    assert img.layer_sizes[0] > 200 * MiB
    assert img.blob_file(img.layer_digests[0]).stat().st_size == img.layer_sizes[0]


def test_registry_start_failure_reports_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        reg = Registry(tmp_path / "r", port=busy.getsockname()[1], start_timeout=5)
        with pytest.raises(RegistryError, match="address already in use"):
            reg.start()
        assert not reg.running


def test_session_images_have_expected_media_types(images: ImageSet) -> None:
    assert images.oci_small.media_type == MT_OCI_MANIFEST
    assert images.schema2.media_type == MT_DOCKER_MANIFEST
    assert images.multi.media_type == MT_OCI_INDEX
    assert len(images.multi.child_digests) == 2
    # The registry serves every type when asked with a matching Accept header.
    m = fetch_manifest(images.upstream_host, "library/schema2", "v1")
    assert m.digest == m.header_digest == images.schema2.digest


@pytest.mark.parametrize("name", ["oci_small", "schema2"])
def test_pull_straight_from_upstream_matches_push(
    images: ImageSet, tmp_path: Path, name: str
) -> None:
    img: PushedImage = getattr(images, name)
    manifest, blobs = _pulled_digests(img.upstream_ref, tmp_path / "pull")
    assert manifest == img.digest
    assert blobs == _expected(img)


def test_pull_index_all_platforms(images: ImageSet, tmp_path: Path) -> None:
    manifest, blobs = _pulled_digests(images.multi.upstream_ref, tmp_path / "pull", all=True)
    assert manifest == images.multi.digest
    assert blobs == _expected(images.multi)


def test_v2s2_index_push_becomes_manifest_list(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    reg = registry_factory()
    ix = make_index(tmp_path / "ix", layer_size=8 * KiB, seed="list")
    pushed = publish(ix, reg.host, "lib/list", "v1", format="v2s2")
    assert pushed.media_type == MT_DOCKER_LIST
    assert pushed.digest != ix.index_digest


def test_proxy_records_a_skopeo_pull(
    images: ImageSet, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    img = images.oci_small
    manifest, blobs = _pulled_digests(img.on(upstream_proxy.host), tmp_path / "pull")
    assert manifest == img.digest
    assert blobs == _expected(img)
    log = exchanges_summary(upstream_proxy.requests())
    assert upstream_proxy.count("GET", "/v2/library/oci-small/manifests/") >= 1, log
    for digest in img.blob_digests:
        got = upstream_proxy.requests("GET", f"/blobs/{digest}", status=200)
        assert len(got) == 1, log
        size = len(Path(tmp_path / "pull" / digest.split(":")[1]).read_bytes())
        assert upstream_proxy.bytes_for(f"/blobs/{digest}") == size
    assert all(e.forwarded and e.fault is None for e in upstream_proxy.requests())


def test_proxy_corrupt_blobs_breaks_pull(
    images: ImageSet, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    upstream_proxy.corrupt_blobs = True
    proc = pull_dir(images.oci_small.on(upstream_proxy.host), tmp_path / "pull", check=False)
    assert proc.returncode != 0
    assert any(e.fault == "corrupt" for e in upstream_proxy.blob_gets())
    # Same length, different bytes: this is a digest failure, not a truncation.
    assert "digest" in proc.stderr.lower(), proc.stderr


def test_proxy_fail_status_and_drop(
    images: ImageSet, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    upstream_proxy.fail_status = 503
    started = time.monotonic()
    proc = pull_dir(images.oci_small.on(upstream_proxy.host), tmp_path / "a", check=False)
    assert proc.returncode != 0
    assert time.monotonic() - started < 20
    assert upstream_proxy.requests() and all(not e.forwarded for e in upstream_proxy.requests())

    upstream_proxy.clear_faults()
    upstream_proxy.reset()
    upstream_proxy.drop_after = 1000
    proc = pull_dir(images.oci_small.on(upstream_proxy.host), tmp_path / "b", check=False)
    assert proc.returncode != 0, exchanges_summary(upstream_proxy.requests())
    dropped = [e for e in upstream_proxy.blob_gets() if e.fault == "drop"]
    assert dropped and all(e.bytes_sent <= 1000 for e in dropped)


def test_proxy_stall_and_path_scoped_faults(
    upstream: Registry, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.stall_seconds = 0.3
    upstream_proxy.fail_status = 500
    upstream_proxy.fault_path_contains = "/manifests/"
    started = time.monotonic()
    assert http_request("GET", upstream_proxy.url + "/v2/").status == 200
    assert time.monotonic() - started < 0.3
    resp = http_request("GET", upstream_proxy.url + "/v2/library/oci-small/manifests/v1")
    assert resp.status == 500
    assert time.monotonic() - started >= 0.3
    assert [e.status for e in upstream_proxy.requests()] == [200, 500]


def test_proxy_restart_keeps_port_and_survives_upstream_restart(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    reg = registry_factory()
    with RecordingProxy(reg.url) as proxy:
        port = proxy.port
        assert http_request("GET", proxy.url + "/v2/").status == 200
        reg.stop()
        assert http_request("GET", proxy.url + "/v2/").status == 502  # upstream down
        reg.start()
        assert http_request("GET", proxy.url + "/v2/").status == 200
        proxy.stop()
        with pytest.raises(OSError):
            http_request("GET", f"http://127.0.0.1:{port}/v2/", timeout=2)
        proxy.start()
        assert proxy.port == port
        assert http_request("GET", proxy.url + "/v2/").status == 200
        assert [e.status for e in proxy.requests()] == [200, 502, 200, 200]
        assert proxy.requests()[1].error is not None


def test_registry_stop_start_keeps_content(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    reg = registry_factory()
    img = make_image(tmp_path / "l", [64 * KiB], seed="restart")
    pushed = publish(img, reg.host, "lib/restart", "v1")
    port, pid = reg.port, reg.pid
    reg.stop()
    assert not reg.running
    with pytest.raises(OSError):
        http_request("GET", reg.url + "/v2/", timeout=2)
    reg.start()
    assert reg.port == port and reg.pid != pid
    assert fetch_manifest(reg.host, "lib/restart", "v1").digest == pushed.digest
    assert all(reg.has_blob(d) for d in img.blob_digests)


def test_http_request_repeated_headers(upstream_proxy: RecordingProxy) -> None:
    accept = [("Accept", "application/vnd.oci.image.index.v1+json"), ("Accept", "text/plain")]
    assert http_request("GET", upstream_proxy.url + "/v2/", headers=accept).status == 200
    (seen,) = upstream_proxy.requests()
    assert seen.request_header("accept") == [v for _, v in accept]


def test_registry_htpasswd(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    reg = registry_factory(htpasswd=("alice", "s3cr:et"))
    assert reg.request("GET", "/v2/", auth=False).status == 401
    assert reg.request("GET", "/v2/").status == 200
    assert reg.request("GET", "/v2/", auth=("alice", "wrong")).status == 401
    img = make_image(tmp_path / "l", [16 * KiB], seed="auth")
    pushed = publish(img, reg.host, "lib/auth", "v1", creds=reg.creds)
    assert pushed.digest == img.manifest_digest
    assert pull_dir(pushed.upstream_ref, tmp_path / "anon", check=False).returncode != 0
    pull_dir(pushed.upstream_ref, tmp_path / "ok", creds=reg.creds)
    assert manifest_digest_in_dir(tmp_path / "ok") == pushed.digest


def test_reference_mirror_through_proxy(
    images: ImageSet,
    upstream_proxy: RecordingProxy,
    registry_factory: RegistryFactory,
    tmp_path: Path,
) -> None:
    """docker-registry in proxy mode serves correct content and caches blobs.

    Note: distribution 2.8 fetches each blob TWICE from upstream on a cold miss
    (one stream to the client, one background ``storeLocal``), and pings ``/v2/``
    before every upstream call; so only ">= 1" is asserted for the cold pull.
    """
    mirror = registry_factory(proxy_remoteurl=upstream_proxy.url)
    img = images.oci_small
    manifest, blobs = _pulled_digests(img.on(mirror.host), tmp_path / "cold")
    assert (manifest, blobs) == (img.digest, _expected(img))
    log = exchanges_summary(upstream_proxy.requests())
    for digest in img.blob_digests:
        assert upstream_proxy.count("GET", f"/blobs/{digest}") >= 1, log
    # The background store may still be running: wait until all blobs are on disk.
    wait_until(lambda: all(mirror.has_blob(d) for d in img.blob_digests), timeout=10)

    upstream_proxy.reset()
    manifest, blobs = _pulled_digests(img.on(mirror.host), tmp_path / "warm")
    assert (manifest, blobs) == (img.digest, _expected(img))
    assert upstream_proxy.blob_gets() == [], exchanges_summary(upstream_proxy.requests())
