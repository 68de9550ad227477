"""Measure the two ways a follower replica can get the bytes of a blob another replica is
downloading: tailing the owner's growing temp file in the shared store (what pullthrough
does), or streaming them from the owner over an authenticated HTTP endpoint.

    python -m tests.cluster.measure_follow [MiB] [followers]

An "owner" process writes the blob in 1 MiB batches at a fixed rate, as a fetch does.
Each follower process makes the bytes available to its clients as they arrive: with the
shared file it polls ``fstat`` and ``pread``s what is new (what its clients' transfers
read anyway); with HTTP the owner also serves each follower from its file and the follower
receives the stream. Reported: wall time until the last follower has every byte, its lag
behind the owner, and CPU seconds per GiB spent on the transfer (owner + followers),
which is what decides on a 2-core replica.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
RATE = 400 * MiB  # bytes per second the owner writes (a fast upstream)
SECRET = "s3cret"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _owner(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    began = time.monotonic()
    with open(path, "wb", buffering=0) as f:
        for written in range(0, size, MiB):
            f.write(block)
            ahead = (written + MiB) / RATE - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    (path.parent / "done").touch()


def _tail_file(path: Path, size: int, out: multiprocessing.Queue[tuple[float, float]]) -> None:
    cpu = _cpu()
    while not path.exists():
        time.sleep(0.005)
    fd = os.open(path, os.O_RDONLY)
    position = 0
    while position < size:
        available = os.fstat(fd).st_size
        while position < available:
            position += len(os.pread(fd, min(MiB, available - position), position))
        if position < size:
            time.sleep(0.02)  # pullthrough's follower polls every 20 ms
    os.close(fd)
    out.put((time.monotonic(), _cpu() - cpu))


def _serve(
    path: Path, size: int, port: int, out: multiprocessing.Queue[tuple[float, float]]
) -> None:
    import uvloop
    from aiohttp import web

    async def blob(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            raise web.HTTPUnauthorized()
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        await _appear(path)
        fd = os.open(path, os.O_RDONLY)
        position = 0
        while position < size:
            available = os.fstat(fd).st_size  # in the owner, its own write counter
            while position < available:
                chunk = os.pread(fd, min(MiB, available - position), position)
                await resp.write(chunk)
                position += len(chunk)
            if position < size:
                await asyncio.sleep(0.005)
        os.close(fd)
        await resp.write_eof()
        return resp

    async def main() -> None:
        cpu = _cpu()
        app = web.Application()
        app.router.add_get("/blob", blob)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await _appear(path.parent / "served")
        out.put((time.monotonic(), _cpu() - cpu))
        await runner.cleanup()

    uvloop.run(main())


async def _appear(path: Path) -> None:
    while True:
        if await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.005)


def _receive(port: int, size: int, out: multiprocessing.Queue[tuple[float, float]]) -> None:
    import aiohttp
    import uvloop

    async def main() -> None:
        cpu = _cpu()
        received = 0
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # the server may still be starting
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}/blob",
                        headers={"Authorization": f"Bearer {SECRET}"},
                    ) as resp:
                        async for chunk in resp.content.iter_any():
                            received += len(chunk)
                    break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.02)
        assert received == size, received
        out.put((time.monotonic(), _cpu() - cpu))

    uvloop.run(main())


def measure(mode: str, size: int, followers: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.partial"
        results: multiprocessing.Queue[tuple[float, float]] = ctx.Queue()
        server_out: multiprocessing.Queue[tuple[float, float]] = ctx.Queue()
        procs = []
        server = None
        if mode == "file":
            procs = [
                ctx.Process(target=_tail_file, args=(path, size, results)) for _ in range(followers)
            ]
        else:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = ctx.Process(target=_serve, args=(path, size, port, server_out))
            server.start()
            procs = [
                ctx.Process(target=_receive, args=(port, size, results)) for _ in range(followers)
            ]
        for p in procs:
            p.start()
        began = time.monotonic()
        owner = ctx.Process(target=_owner, args=(path, size))
        owner.start()
        owner.join(300)
        written = time.monotonic()
        ends = [results.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(30)
        cpu = sum(c for _, c in ends)
        if server is not None:
            (Path(tmp) / "served").touch()
            cpu += server_out.get(timeout=60)[1]
            server.join(30)
        last = max(t for t, _ in ends)
    gib = size * followers / (1024 * MiB)
    return {
        "wall": last - began,
        "lag": last - written,
        "cpu_per_gib": cpu / gib,
    }


def main() -> None:
    size = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 512 * MiB
    followers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"{size // MiB} MiB written at {RATE // MiB} MiB/s, {followers} followers")
    for mode in ("file", "http"):
        got = measure(mode, size, followers)
        print(
            f"  {mode:4}: last follower done {got['wall']:.2f}s after the first write, "
            f"{got['lag'] * 1000:.0f} ms after the last; "
            f"transfer CPU {got['cpu_per_gib']:.2f} s/GiB"
        )


if __name__ == "__main__":
    main()
