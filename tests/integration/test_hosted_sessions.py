"""Many upload sessions from one client at once: the per-client cap holds under concurrency,
every refusal is a clear OCI error, nothing partial is stored and other clients push on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import MirrorFactory
from tests.integration.test_hosted import PUSHERS
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

SESSIONS = 1_000
DEFAULT_CAP = 100  # mirror.hosted.max_uploads_per_client when not configured
IN_FLIGHT = 1_000  # concurrent connections of the flooding client: all at once
BOUND = 240.0  # seconds the whole flood may take before the test gives up


def _default_cap_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(json.dumps(PUSHERS))
    del config["mirror"]["hosted"]["max_uploads_per_client"]
    return config


async def _open(
    http: aiohttp.ClientSession, url: str, gate: asyncio.Semaphore
) -> tuple[int, str | None, Any]:
    async with gate, http.post(url) as resp:
        body = await resp.read()
        doc = json.loads(body) if body else None
        return resp.status, resp.headers.get("Location"), doc


async def _other_client_pushes_and_pulls(base: str, data: bytes) -> None:
    """A client on another loopback address pushes and pulls a blob: unaffected."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"{base}/v2/acme/other/blobs/uploads/?digest={digest}"
        async with http.post(url, data=data) as resp:
            assert resp.status == 201, await resp.text()
        async with http.get(f"{base}/v2/acme/other/blobs/{digest}") as resp:
            assert resp.status == 200
            assert await resp.read() == data


async def _flood(mirror: MirrorProcess) -> dict[str, Any]:
    base = mirror.url
    gate = asyncio.Semaphore(IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT, local_addr=("127.0.0.1", 0))
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        started = time.monotonic()
        url = f"{base}/v2/acme/app/blobs/uploads/"
        flood = [asyncio.create_task(_open(http, url, gate)) for _ in range(SESSIONS)]
        meanwhile = asyncio.create_task(_other_client_pushes_and_pulls(base, b"beside" * 999))
        answers = await asyncio.gather(*flood)
        await meanwhile
        flood_seconds = time.monotonic() - started
        files = sorted(p.name for p in (mirror.root / "uploads").glob("*.data"))
        opened = [loc for status, loc, _ in answers if status == 202]
        started = time.monotonic()
        cancelled = await asyncio.gather(*(_cancel(http, base, loc, gate) for loc in opened))
        cancel_seconds = time.monotonic() - started
        again, _, _ = await _open(http, url, gate)
        left = sorted(p.name for p in (mirror.root / "uploads").glob("*.data"))
        await _other_client_pushes_and_pulls(base, b"after" * 777)
    return {
        "answers": answers,
        "files": files,
        "cancelled": cancelled,
        "again": again,
        "left": left,
        "flood_seconds": flood_seconds,
        "cancel_seconds": cancel_seconds,
    }


async def _cancel(
    http: aiohttp.ClientSession, base: str, location: str | None, gate: asyncio.Semaphore
) -> int:
    async with gate, http.delete(f"{base}{location}") as resp:
        return resp.status


def test_a_thousand_sessions_from_one_client_meet_the_cap_and_nothing_else(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=_default_cap_config())
    seen = asyncio.run(asyncio.wait_for(_flood(mirror), BOUND))
    answers = seen["answers"]
    statuses = [status for status, _, _ in answers]
    print(
        f"{SESSIONS} sessions: {seen['flood_seconds']:.2f}s; "
        f"{statuses.count(202)} cancelled in {seen['cancel_seconds']:.2f}s"
    )
    assert statuses.count(202) == DEFAULT_CAP
    assert statuses.count(429) == SESSIONS - DEFAULT_CAP
    for status, _, doc in answers:
        if status == 429:
            assert doc is not None and doc["errors"][0]["code"] == "TOOMANYREQUESTS"
            assert "max_uploads_per_client" in doc["errors"][0]["message"]
    # One file per open session, none for a refused one (the other client's are done).
    assert len(seen["files"]) == DEFAULT_CAP
    assert seen["cancelled"] == [204] * DEFAULT_CAP
    assert seen["again"] == 202  # cancelled sessions gave their places back
    assert len(seen["left"]) == 1
    assert mirror.proc is not None and mirror.proc.poll() is None  # still serving


def _cut_short_monolithic_push(mirror: MirrorProcess, data: bytes) -> None:
    """A monolithic push whose client goes away after part of its body."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v2/acme/app/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
            f"Host: {mirror.host}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data[: len(data) // 2]
        )
        time.sleep(0.05)  # the server has started the session and is reading the body


def test_monolithic_pushes_cut_short_give_their_sessions_back(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=PUSHERS)  # a cap of 5
    for i in range(12):
        _cut_short_monolithic_push(mirror, bytes([i]) * 100_000)
    deadline = time.monotonic() + 10
    uploads = mirror.root / "uploads"
    while any(uploads.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(uploads.iterdir()) == []  # nothing partial kept
    for _ in range(5):  # every place is free again
        resp = http_request("POST", f"{mirror.url}/v2/acme/app/blobs/uploads/")
        assert resp.status == 202, resp.body
    # A client hanging up is not the mirror's error: no traceback, no 500 in its log.
    log = mirror.log_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    assert '" 500 ' not in log
