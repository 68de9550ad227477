"""What a running ``pullthrough serve`` says about itself: ``Server: pullthrough`` on every
response of the registry and the debug port, never the aiohttp or Python version."""

from __future__ import annotations

import socket

import pytest

from tests.support.images import ImageSet
from tests.support.net import LOOPBACK, free_port, http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


def _raw_headers(port: int, request: bytes) -> dict[str, str]:
    """The status line and headers of the answer to bytes no HTTP client would send."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {"status": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def test_no_response_names_aiohttp_or_python(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet
) -> None:
    debug_port = free_port()
    mirror = mirror_factory(
        upstream_proxy.url,
        config={
            "http": {"debug": {"addr": f"{LOOPBACK}:{debug_port}", "prometheus": {"enabled": True}}}
        },
    )
    image = images.oci_small
    debug = f"http://{LOOPBACK}:{debug_port}"
    answers = {
        path: http_request("GET", url)
        for path, url in {
            "/v2/": f"{mirror.url}/v2/",
            "manifest": f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}",
            "unknown manifest": f"{mirror.url}/v2/{image.repo}/manifests/no-such-tag",
            "outside the API": f"{mirror.url}/nope",
            "health": f"{debug}/debug/health",
            "metrics": f"{debug}/metrics",
            "debug 404": f"{debug}/nope",
        }.items()
    }
    assert answers["manifest"].status == 200 and answers["health"].status == 200
    servers = {what: resp.header("Server") for what, resp in answers.items()}
    # Requests aiohttp's parser refuses before any handler of ours runs.
    for port in (mirror.port, debug_port):
        for what, request in {
            "bad request line": b"GARBAGE\r\n\r\n",
            "oversized header": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        }.items():
            got = _raw_headers(port, request)
            assert " 400 " in got["status"], got
            servers[f"{what} on {port}"] = got.get("server")
    for what, server in servers.items():
        assert server in (None, "pullthrough"), f"{what}: Server: {server}"
