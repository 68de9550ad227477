"""Every way an upstream fails, one row each: what the client sees, what is stored (never
anything unverified), and that the next pull after the fault clears succeeds.

The mirror runs with 1 s connect and read time-outs so each failure is quick to show.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import MiB
from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import Blackhole, HTTPResponse, http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

FAST = {"mirror": {"upstream_connect_timeout": "1s", "upstream_read_timeout": "1s"}}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# A clean failure is quick: a time-out of 1 s plus retries and the client's own overhead.
QUICK = 6.0


@dataclass
class Pull:
    manifest: HTTPResponse
    blob: HTTPResponse | None  # None: no blob asked for, or the transfer was aborted
    seconds: float


def _pull(mirror: MirrorProcess, image: PushedImage, *, blob: str | None = None) -> Pull:
    """GET the image's manifest by tag and, if the manifest came, one blob."""
    began = time.monotonic()
    manifest = http_request(
        "GET",
        f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}",
        headers={"Accept": OCI_MANIFEST},
        timeout=30,
    )
    got_blob = None
    if blob is not None:
        try:
            got_blob = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{blob}", timeout=30)
        except (OSError, http.client.HTTPException):
            got_blob = None  # the mirror aborted the transfer
    return Pull(manifest, got_blob, time.monotonic() - began)


def _code(resp: HTTPResponse) -> str:
    return str(json.loads(resp.body)["errors"][0]["code"])


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _assert_store_verifies(mirror: MirrorProcess) -> None:
    for digest, path in mirror.stored_files().items():
        assert _sha(path.read_bytes()) == digest, path


@pytest.fixture
def fresh(image_factory) -> PushedImage:
    return image_factory("library/faulty", layers=(2 * MiB,))


@pytest.fixture
def fast_mirror(mirror_factory, upstream_proxy: RecordingProxy) -> MirrorProcess:
    return mirror_factory(upstream_proxy.url, config=FAST)


def _layer(image: PushedImage) -> str:
    return image.source.layer_digests[0]


def test_connection_refused_fails_fast_then_recovers(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.stop()
    pull = _pull(fast_mirror, fresh)
    assert pull.manifest.status == 503 and _code(pull.manifest) == "UNAVAILABLE"
    assert "could not be reached" in pull.manifest.body.decode()
    assert pull.seconds < QUICK
    upstream_proxy.start()
    back = time.monotonic()
    # No rest after a failure: the first pull after the upstream is back succeeds.
    again = _pull(fast_mirror, fresh, blob=_layer(fresh))
    assert again.manifest.status == 200 and again.blob is not None
    assert _sha(again.blob.body) == _layer(fresh)
    print(
        f"\nrefused: failed in {pull.seconds:.3f}s; first good pull done "
        f"{time.monotonic() - back:.3f}s after the upstream came back"
    )


def _private_resolver(tmp_path: Path) -> list[str]:
    """A wrapper that runs the mirror in its own mount namespace whose resolv.conf names a
    loopback port nobody serves: name look-ups fail at once and no query leaves loopback."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    # -n: no record in /run/mount/utab, which would create /run/mount on the machine.
    script = f'mount -n --bind {resolv} /etc/resolv.conf && exec "$0" "$@"'
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "true"], capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr[-200:]!r}")
    return ["unshare", "-m", "sh", "-c", script]


def test_dns_failure_of_the_remote_host_fails_fast(mirror_factory, tmp_path: Path) -> None:
    mirror = mirror_factory(
        "http://no-such-registry.invalid:5000", config=FAST, wrapper=_private_resolver(tmp_path)
    )
    began = time.monotonic()
    resp = http_request("GET", f"{mirror.url}/v2/library/x/manifests/latest", timeout=30)
    assert resp.status == 503 and _code(resp) == "UNAVAILABLE"
    assert "could not be reached" in resp.body.decode()
    assert "no-such-registry.invalid" in resp.body.decode()
    assert time.monotonic() - began < QUICK


def test_connect_timeout_fails_fast(mirror_factory) -> None:
    with Blackhole() as hole:
        mirror = mirror_factory(hole.url, config=FAST)
        began = time.monotonic()
        resp = http_request("GET", f"{mirror.url}/v2/library/x/manifests/latest", timeout=30)
        elapsed = time.monotonic() - began
    assert resp.status == 503 and _code(resp) == "UNAVAILABLE"
    assert "timed out" in resp.body.decode() or "could not be reached" in resp.body.decode()
    assert elapsed < QUICK


def test_upstream_that_never_answers_hits_the_read_timeout(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.stall_seconds = 10
    pull = _pull(fast_mirror, fresh)
    assert pull.manifest.status == 503 and _code(pull.manifest) == "UNAVAILABLE"
    assert pull.seconds < QUICK
    upstream_proxy.stall_seconds = 0
    assert _pull(fast_mirror, fresh).manifest.status == 200


def test_read_stalling_mid_blob_is_resumed_and_the_client_just_waits(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.stall_body_after = MiB
    upstream_proxy.stall_body_seconds = 3  # longer than the 1 s read time-out
    pull = _pull(fast_mirror, fresh, blob=_layer(fresh))
    assert pull.blob is not None and pull.blob.status == 200
    assert _sha(pull.blob.body) == _layer(fresh)
    # (The stalled first exchange is recorded only when the proxy's pause ends.)
    gets = upstream_proxy.requests(method="GET", path_contains=_layer(fresh))
    assert any(g.request_header("Range") and g.status == 206 for g in gets)
    assert _layer(fresh) in fast_mirror.stored_files()
    assert "resuming" in fast_mirror.log_text()


def test_body_longer_than_content_length_is_cut_at_the_announced_length(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.overlong_blobs = 4096
    pull = _pull(fast_mirror, fresh, blob=_layer(fresh))
    assert pull.blob is not None and pull.blob.status == 200
    assert _sha(pull.blob.body) == _layer(fresh)
    _assert_store_verifies(fast_mirror)


def test_body_shorter_than_content_length_is_resumed(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.drop_after = MiB + 7  # closes with the Content-Length not reached
    pull = _pull(fast_mirror, fresh, blob=_layer(fresh))
    assert pull.blob is not None and pull.blob.status == 200
    assert _sha(pull.blob.body) == _layer(fresh)
    _assert_store_verifies(fast_mirror)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_serve_cached_tags_and_fail_uncached_cleanly(
    status: int,
    images,
    fresh: PushedImage,
    fast_mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
) -> None:
    cached = images.oci_small
    assert _pull(fast_mirror, cached).manifest.status == 200
    upstream_proxy.fail_status = status
    stale = _pull(fast_mirror, cached)
    assert stale.manifest.status == 200
    assert stale.manifest.header("Docker-Content-Digest") == cached.digest
    cold = _pull(fast_mirror, fresh)
    assert cold.manifest.status == 503 and _code(cold.manifest) == "UNAVAILABLE"
    assert f"answered {status}" in cold.manifest.body.decode()
    blob = http_request("GET", f"{fast_mirror.url}/v2/{fresh.repo}/blobs/{_layer(fresh)}")
    assert blob.status == 503
    assert _layer(fresh) not in fast_mirror.stored_files()
    upstream_proxy.fail_status = None
    recovered = _pull(fast_mirror, fresh, blob=_layer(fresh)).blob
    assert recovered is not None and _sha(recovered.body) == _layer(fresh)


def test_manifest_whose_digest_is_not_the_one_asked_for_is_refused(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.tamper_manifests = True
    by_tag = _pull(fast_mirror, fresh)
    assert by_tag.manifest.status == 502 and _code(by_tag.manifest) == "UPSTREAM_INVALID"
    by_digest = http_request("GET", f"{fast_mirror.url}/v2/{fresh.repo}/manifests/{fresh.digest}")
    assert by_digest.status == 502
    assert "not stored" in by_digest.body.decode()
    assert fresh.digest not in fast_mirror.stored_files()
    _assert_store_verifies(fast_mirror)
    upstream_proxy.tamper_manifests = False
    ok = _pull(fast_mirror, fresh)
    assert ok.manifest.status == 200 and ok.manifest.body == fresh.raw_manifest


def test_html_error_page_with_status_200_is_never_stored_or_served(
    fresh: PushedImage, fast_mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    upstream_proxy.fail_status = 200
    upstream_proxy.fail_content_type = "text/html"
    upstream_proxy.fail_body = "<html><body><h1>Service temporarily unavailable</h1></body></html>"
    pull = _pull(fast_mirror, fresh, blob=_layer(fresh))
    assert pull.manifest.status == 502 and _code(pull.manifest) == "UPSTREAM_INVALID"
    assert "not a manifest" in pull.manifest.body.decode()
    # The blob answer started as a 200 (its headers went out) but never completed.
    assert pull.blob is None
    assert fast_mirror.stored_files() == {}
    upstream_proxy.clear_faults()
    again = _pull(fast_mirror, fresh, blob=_layer(fresh))
    assert again.manifest.status == 200 and again.blob is not None
    assert _sha(again.blob.body) == _layer(fresh)


def test_no_request_hangs_on_a_dead_upstream(mirror_factory) -> None:
    """With the default time-outs a blackholed upstream still fails in bounded
    time, well before a client would give up."""
    with Blackhole() as hole:
        defaults = {"upstream_connect_timeout": "5s", "upstream_read_timeout": "30s"}
        mirror = mirror_factory(hole.url, config={"mirror": defaults})
        began = time.monotonic()
        resp = http_request("GET", f"{mirror.url}/v2/library/x/blobs/sha256:{'a' * 64}", timeout=60)
    assert resp.status == 503
    assert time.monotonic() - began < 15
