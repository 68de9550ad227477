"""Slow or stuck clients must not block normal pulls (slowloris)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.images import manifest_digest_in_dir, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_CONNECTIONS = 500
ROUNDS = 3
INTERVAL = 2.0  # seconds between the bytes each slow client dribbles


def test_500_slowloris_connections_do_not_block_pulls(
    images, mirror: MirrorProcess, tmp_path
) -> None:
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", mirror.port), timeout=5)
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # headers never finish
            slow.append(sock)
        for round_ in range(ROUNDS):
            began = time.monotonic()
            dest = tmp_path / f"pull-{round_}"
            pull_dir(images.oci_small.on(mirror.host), dest, timeout=30)
            assert manifest_digest_in_dir(dest) == images.oci_small.digest
            assert time.monotonic() - began < 10
            for sock in slow:
                sock.sendall(b"X")  # one more byte each, as slowloris does
            time.sleep(INTERVAL)
    finally:
        for sock in slow:
            sock.close()


def test_a_connection_that_never_finishes_its_request_is_closed(
    mirror_factory, upstream_proxy
) -> None:
    mirror = mirror_factory(
        upstream_proxy.url, config={"mirror": {"limits": {"header_timeout": "1s"}}}
    )
    sock = socket.create_connection(("127.0.0.1", mirror.port), timeout=10)
    try:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        assert sock.recv(1024) == b""  # the server hung up
        assert time.monotonic() - began < 5
    finally:
        sock.close()


def test_connections_beyond_the_limit_are_refused_and_service_goes_on(
    mirror_factory, upstream_proxy
) -> None:
    mirror = mirror_factory(
        upstream_proxy.url, config={"mirror": {"limits": {"max_connections": 5}}}
    )
    held = [socket.create_connection(("127.0.0.1", mirror.port), timeout=5) for _ in range(5)]
    try:
        extra = socket.create_connection(("127.0.0.1", mirror.port), timeout=5)
        extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = extra.recv(1024)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed without an answer
        extra.close()
        assert "max_connections" in mirror.log_text()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert http_request("GET", f"{mirror.url}/v2/").status == 200


def _exchange(
    port: int, head: bytes, body: bytes = b"", timeout: float = 10
) -> tuple[bytes, float]:
    """Send ``head`` (and ``body``), read until the server closes or goes quiet; returns
    what came back and how long the server took to hang up (or the time-out)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(head + body)
        began = time.monotonic()
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass
        return got, time.monotonic() - began
    finally:
        sock.close()


@pytest.mark.parametrize(
    "framing, body",
    [
        (b"Content-Length: 1000000000", b"x" * 65536),  # 64 KiB of a 1 GB body
        (b"Transfer-Encoding: chunked", b"10000\r\n" + b"x" * 65536),  # no length announced
    ],
)
def test_a_request_body_over_the_limit_is_refused_unread(
    mirror_factory, upstream_proxy, framing: bytes, body: bytes
) -> None:
    mirror = mirror_factory(
        upstream_proxy.url, config={"mirror": {"limits": {"max_body_size": "1KiB"}}}
    )
    # The mirror answers and hangs up instead of reading on.
    got, took = _exchange(
        mirror.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n", body
    )
    status, _, rest = got.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413"), got[:200]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["errors"][0]["code"] == "SIZE_INVALID"
    assert "mirror.limits.max_body_size" in body["errors"][0]["message"]
    assert took < 2  # closed at once: aiohttp alone would read the body for 10 s
    # A body within the limit is read and ignored; the service goes on.
    got, _ = _exchange(
        mirror.port,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 512\r\nConnection: close\r\n\r\n",
        b"y" * 512,
    )
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert http_request("GET", f"{mirror.url}/v2/").status == 200
