"""``upstream.wire``: the blob-download client on blocking sockets. What it must get right
on its own (everything above it is the same path as every other upstream request): bodies
arrive as they come (not a full buffer at a time), a connection is reused only when its
answer was read to the end, a pooled connection the server closed is replaced without the
caller noticing, and every way a body can end short is an error, never a short success."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from aiohttp.resolver import DefaultResolver

from pullthrough.upstream.wire import Unreachable, WireResponse, WireSession
from tests.support.net import LOOPBACK, free_port

Script = Callable[[socket.socket, int], None]


class Server:
    """A loopback server that runs ``script(conn, n)`` for the n-th connection (0-based)
    and counts connections."""

    def __init__(self, script: Script) -> None:
        self.connections = 0
        self._script = script
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            n, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._run, args=(conn, n), daemon=True).start()

    def _run(self, conn: socket.socket, n: int) -> None:
        with conn, contextlib.suppress(OSError):
            self._script(conn, n)

    def close(self) -> None:
        self._listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _answer(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@pytest.fixture
def serve() -> Iterator[Callable[[Script], Server]]:
    servers: list[Server] = []

    def start(script: Script) -> Server:
        servers.append(Server(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _session() -> WireSession:
    return WireSession(resolver=DefaultResolver(), connect_timeout=2.0, read_timeout=2.0)


def _read_all(resp: WireResponse, size: int = 64 * 1024) -> bytes:
    out = bytearray()
    buffer = memoryview(bytearray(size))
    while count := resp.readinto(buffer, 2.0):
        out += buffer[:count]
    return bytes(out)


def test_a_body_is_handed_over_as_it_arrives_not_a_buffer_at_a_time(serve) -> None:
    def script(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"a" * 1000)
        time.sleep(1.0)
        conn.sendall(b"b" * 1999000)

    server = serve(script)

    async def run() -> tuple[int, float]:
        session = _session()
        resp = await session.request("GET", f"http://{LOOPBACK}:{server.port}/x", headers={})
        began = time.monotonic()
        count = await asyncio.to_thread(resp.readinto, memoryview(bytearray(1 << 20)), 2.0)
        took = time.monotonic() - began
        resp.release()
        await session.close()
        return count, took

    count, took = asyncio.run(run())
    assert 0 < count <= 1000 and took < 0.5


def test_a_connection_is_reused_only_after_its_answer_was_read_to_the_end(serve) -> None:
    def script(conn: socket.socket, n: int) -> None:
        while True:
            _read_request(conn)
            conn.sendall(_answer(b"x" * 100_000))

    server = serve(script)
    url = f"http://{LOOPBACK}:{server.port}/blob"

    async def run() -> list[bytes]:
        session = _session()
        bodies = []
        for _ in range(3):  # read to the end: one connection for all three
            resp = await session.request("GET", url, headers={})
            bodies.append(await asyncio.to_thread(_read_all, resp))
            resp.release()
        unread = await session.request("GET", url, headers={})
        unread.release()  # not read: that connection is dropped
        resp = await session.request("GET", url, headers={})
        bodies.append(await asyncio.to_thread(_read_all, resp))
        resp.release()
        await session.close()
        return bodies

    assert asyncio.run(run()) == [b"x" * 100_000] * 4
    assert server.connections == 2


def test_a_pooled_connection_the_server_closed_is_replaced(serve) -> None:
    def script(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(_answer(b"hello"))  # then closes: keep-alive not honoured

    server = serve(script)
    url = f"http://{LOOPBACK}:{server.port}/blob"

    async def run() -> list[bytes]:
        session = _session()
        bodies = []
        for _ in range(2):
            resp = await session.request("GET", url, headers={})
            bodies.append(await asyncio.to_thread(_read_all, resp))
            resp.release()
            await asyncio.sleep(0.1)
        await session.close()
        return bodies

    assert asyncio.run(run()) == [b"hello", b"hello"]
    assert server.connections == 2


@pytest.mark.parametrize("how", ["close", "chunked-cut"])
def test_a_body_cut_short_is_an_error_never_a_short_success(serve, how: str) -> None:
    def script(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        if how == "close":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n" + b"y" * 8)

    server = serve(script)

    async def run() -> None:
        session = _session()
        resp = await session.request("GET", f"http://{LOOPBACK}:{server.port}/x", headers={})
        try:
            await asyncio.to_thread(_read_all, resp)
        finally:
            resp.release()
            await session.close()

    with pytest.raises(Exception) as caught:
        asyncio.run(run())
    assert not isinstance(caught.value, AssertionError)


def test_a_chunked_body_is_read_whole(serve) -> None:
    def script(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    server = serve(script)

    async def run() -> bytes:
        session = _session()
        resp = await session.request("GET", f"http://{LOOPBACK}:{server.port}/x", headers={})
        body = await asyncio.to_thread(_read_all, resp)
        resp.release()
        await session.close()
        return body

    assert asyncio.run(run()) == b"hello world"


def test_nobody_listening_is_unreachable_and_silence_is_a_time_out(serve) -> None:
    def silent(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        time.sleep(3)

    server = serve(silent)

    async def run() -> None:
        session = WireSession(resolver=DefaultResolver(), connect_timeout=1.0, read_timeout=0.3)
        with pytest.raises(Unreachable):
            await session.request("GET", f"http://{LOOPBACK}:{free_port()}/x", headers={})
        began = time.monotonic()
        with pytest.raises(aiohttp.ServerTimeoutError):
            await session.request("GET", f"http://{LOOPBACK}:{server.port}/x", headers={})
        assert time.monotonic() - began < 2
        await session.close()

    asyncio.run(run())


def test_abort_unblocks_a_read_in_another_thread(serve) -> None:
    def script(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        time.sleep(5)

    server = serve(script)

    async def run() -> float:
        session = _session()
        resp = await session.request("GET", f"http://{LOOPBACK}:{server.port}/x", headers={})
        reading = asyncio.ensure_future(
            asyncio.to_thread(resp.readinto, memoryview(bytearray(100)), 4.0)
        )
        await asyncio.sleep(0.2)
        began = time.monotonic()
        resp.abort()
        with pytest.raises(OSError):
            await reading
        took = time.monotonic() - began
        resp.release()
        await session.close()
        return took

    assert asyncio.run(run()) < 1.0
