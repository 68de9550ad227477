"""Malformed requests get the right OCI error and status: never a 500, never a traceback,
never a file touched outside the storage root."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import pytest

from tests.support.mirror import MirrorProcess

pytestmark = pytest.mark.integration

HEX = "a" * 64
REPO = "library/oci-small"

CASES = [
    # method, raw path, headers, status, code
    ("GET", "/v2/UPPER/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/a..b/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/library/../../etc/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/library/%2e%2e/etc/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", "/v2/library/x%2f..%2f..%2fetc/blobs/sha256:" + HEX, {}, 400, "NAME_INVALID"),
    ("GET", "/v2/" + "a" * 300 + "/manifests/v1", {}, 400, "NAME_INVALID"),
    ("GET", f"/v2/{REPO}/manifests/-bad", {}, 400, "TAG_INVALID"),
    ("GET", f"/v2/{REPO}/manifests/" + "t" * 129, {}, 400, "TAG_INVALID"),
    ("GET", f"/v2/{REPO}/manifests/sha256:short", {}, 400, "DIGEST_INVALID"),
    ("GET", f"/v2/{REPO}/manifests/md5:{'a' * 32}", {}, 400, "DIGEST_INVALID"),
    ("GET", f"/v2/{REPO}/blobs/sha256:{'A' * 64}", {}, 400, "DIGEST_INVALID"),
    ("GET", f"/v2/{REPO}/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd", {}, 400, "DIGEST_INVALID"),
    ("GET", f"/v2/{REPO}/blobs/sha256:{'a' * 63}", {}, 400, "DIGEST_INVALID"),
    ("GET", f"/v2/{REPO}/blobs/notadigest", {}, 400, "DIGEST_INVALID"),
    ("HEAD", f"/v2/{REPO}/blobs/sha256:xyz", {}, 400, None),
    ("GET", "/v2/_catalog?n=abc", {}, 400, "PAGINATION_NUMBER_INVALID"),
    ("GET", "/v2/_catalog?n=-1", {}, 400, "PAGINATION_NUMBER_INVALID"),
    ("GET", f"/v2/{REPO}/tags/list?n=99999999999999999999", {}, 400, "PAGINATION_NUMBER_INVALID"),
    ("PUT", f"/v2/{REPO}/manifests/v1", {}, 405, "UNSUPPORTED"),
    ("DELETE", f"/v2/{REPO}/manifests/v1", {}, 405, "UNSUPPORTED"),
    ("DELETE", f"/v2/{REPO}/blobs/sha256:{HEX}", {}, 405, "UNSUPPORTED"),
    ("POST", f"/v2/{REPO}/blobs/uploads/", {}, 405, "UNSUPPORTED"),
    ("PATCH", f"/v2/{REPO}/blobs/uploads/some-uuid", {}, 405, "UNSUPPORTED"),
    ("GET", "/v3/", {}, 404, "NOT_FOUND"),
    ("GET", "/etc/passwd", {}, 404, "NOT_FOUND"),
    ("GET", "/v2/../../etc/passwd", {}, 404, "NOT_FOUND"),
]

RANGE_CASES = [
    ("bytes=99999999999999-", 416),
    ("bytes=-0", 416),
    ("bytes=5-1", 416),
    ("bytes=-5-10", 416),
    ("bytes=0-1,4-5", 416),
    ("bytes=abc", 416),
    ("bytes=" + "9" * 40 + "-", 416),
    ("bytes=0-99999999999999999", 200),  # clamped to the blob: all of it, as a 206
]


def _raw(
    mirror: MirrorProcess, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(mirror.host, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


@pytest.fixture
def served_mirror(images, mirror: MirrorProcess) -> MirrorProcess:
    return mirror


@pytest.mark.parametrize(("method", "path", "headers", "status", "code"), CASES)
def test_malformed_request_gets_the_right_oci_error(
    served_mirror: MirrorProcess,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    got, resp_headers, body = _raw(served_mirror, method, path, headers)
    assert got == status, body
    if method != "HEAD":
        errors = json.loads(body)["errors"]
        assert errors[0]["code"] == code
        assert errors[0]["message"]
        assert resp_headers["content-type"].startswith("application/json")
    log = served_mirror.log_text()
    assert "Traceback" not in log.replace("Received HTTPS traffic", "")
    assert " 500 " not in log


@pytest.mark.parametrize(("value", "status"), RANGE_CASES)
def test_bad_ranges_get_416_with_the_blob_size(
    images,
    served_mirror: MirrorProcess,
    value: str,
    status: int,
) -> None:
    image = images.oci_small
    layer = image.source.layer_digests[0]
    size = image.source.blob_file(layer).stat().st_size
    path = f"/v2/{image.repo}/blobs/{layer}"
    got, headers, body = _raw(served_mirror, "GET", path, {"Range": value})
    if status == 416:
        assert got == 416
        assert headers["content-range"] == f"bytes */{size}"
        assert json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
    else:
        assert got == 206
        assert len(body) == size


def test_nothing_is_written_outside_the_storage_root(
    served_mirror: MirrorProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = set(served_mirror.workdir.iterdir())
    for method, path, headers, _, _ in CASES:
        _raw(served_mirror, method, path, headers)
    after = set(served_mirror.workdir.iterdir())
    assert after == before
    stored = set(served_mirror.root.iterdir())
    assert {p.name for p in stored} <= {"blobs", "tmp", "index.db", "index.db-wal", "index.db-shm"}


def test_tls_client_hello_on_the_plain_port_gets_a_quick_error(
    served_mirror: MirrorProcess,
) -> None:
    """podman and skopeo try TLS first; the mirror must answer at once, not hang."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    began = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", served_mirror.port), timeout=5) as sock,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
    ):
        ctx.wrap_socket(sock, server_hostname="localhost")
    assert time.monotonic() - began < 2
    # And the port still serves plain HTTP afterwards.
    status, _, _ = _raw(served_mirror, "GET", "/v2/")
    assert status == 200


def test_oversized_request_headers_are_refused_cleanly(served_mirror: MirrorProcess) -> None:
    status, _, _ = _raw(served_mirror, "GET", "/v2/", {"X-Big": "x" * 64 * 1024})
    assert status in (400, 431)
