#!/usr/bin/env python3
"""How fast one uvloop process can send a cached file to clients, per kernel path.

    /work/main/.venv/bin/python bench/kernel_paths.py [--quick] [--only V,V] [--runs N]

Standalone (no pullthrough import). Creates a file of random bytes once under --workdir
(default /tmp/kernel-paths), reads it once so the page cache is warm, then starts one server
process per variant: an asyncio server on uvloop (the product's loop) answering any
``GET`` with ``200``, ``Content-Length`` and ``Connection: close``, sending the body with that
variant's kernel path. Clients are ``bench/client.py`` in their own process (one thread per
stream, ``recv_into`` a 1 MiB buffer), as bench/run.py runs it: 1 stream (--runs runs,
default 3) and 20 concurrent streams of the same file (--runs20, default 2). Rounds interleave
the variants, so a load spike from elsewhere hits all of them rather than one. Each variant's
bytes are checked once (a hashed GET, untimed) before it is timed.

Server CPU is utime+stime of the server process (all its threads) from /proc, read by the
driver around each client run, divided by the bytes the clients received.

It prints a table and writes bench/results/<timestamp>-kernel-paths.json (git-ignored).
The server side runs as ``kernel_paths.py --serve VARIANT --file PATH`` (prints its port).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
MIB = 1 << 20
GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
HEAD_FLUSH_POLLS, HEAD_FLUSH_SECONDS = 2000, 0.0005
POLL_TIMEOUT_MS = 60_000

# Threads that block for a whole stream (thread-blocking, socket.sendfile*) get their own
# pool, wide enough for every stream at once: the default executor has min(32, cpus + 4)
# = 6 workers on this machine and would serialize 20 streams.
STREAM_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="stream")


# --------------------------------------------------------------------------- server side


class Conn(asyncio.Protocol):
    """One client connection: reads a request head, then sends the file with the variant."""

    def __init__(self, variant: Variant, path: str, fd: int, size: int) -> None:
        self.variant, self.path, self.fd, self.size = variant, path, fd, size
        self.buf = b""
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False

    # asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.sock_fd = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            return  # one request per connection (Connection: close)
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.task = asyncio.get_running_loop().create_task(self.respond())
        elif len(self.buf) > 65536:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    # helpers --------------------------------------------------------------------------
    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def drain(self) -> None:
        """asyncio streams' drain(): wait while the transport is over its high-water mark."""
        while self.paused and not self.lost:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.lost:
            raise ConnectionResetError("client went away")

    async def head_flushed(self) -> None:
        """Wait until the response head has left the transport's buffer, so bytes written
        to the socket directly come after it (what the product's _drained() does)."""
        for _ in range(HEAD_FLUSH_POLLS):
            if self.transport.get_write_buffer_size() == 0:
                return
            await asyncio.sleep(HEAD_FLUSH_SECONDS)
        raise TimeoutError("response head still buffered after 1 s")

    async def respond(self) -> None:
        try:
            if not self.buf.startswith(b"GET "):
                self.transport.write(
                    b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % self.size
            )
            await self.variant(self, self.fd, 0, self.size)
        except Exception as exc:  # noqa: BLE001 - reported to the driver via stderr
            print(f"ERROR {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self.transport.abort()
        finally:
            self.transport.close()


Variant = Callable[[Conn, int, int, int], Awaitable[None]]


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` (a dup of the client socket) is writable."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _short(offset: int, end: int) -> OSError:
    return OSError(f"file ended at byte {offset}, expected {end}")


# 1 + 2: sendfile from the loop thread -----------------------------------------------------


async def sendfile_loop(conn: Conn, fd: int, offset: int, count: int, cap: int | None) -> None:
    """os.sendfile on a dup of the non-blocking socket from the loop thread, each call asking
    for everything left (cap None: today's code) or at most ``cap`` bytes; on EAGAIN wait for
    writability on the dup (uvloop refuses add_writer on the transport's own fd)."""
    await conn.head_flushed()
    loop = asyncio.get_running_loop()
    out = os.dup(conn.sock_fd)
    try:
        end = offset + count
        while offset < end:
            want = end - offset if cap is None else min(cap, end - offset)
            try:
                sent = os.sendfile(out, fd, offset, want)
            except BlockingIOError:
                await _writable(loop, out)
                continue
            if sent == 0:
                raise _short(offset, end)
            offset += sent
    finally:
        os.close(out)


# 3: sendfile in the default thread pool, back to the loop on EAGAIN ------------------------


def _sendfile_until_eagain(out: int, fd: int, offset: int, end: int, cap: int) -> tuple[int, bool]:
    """sendfile calls of at most ``cap`` bytes until done or EAGAIN: (offset, hit EAGAIN)."""
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, min(cap, end - offset))
        except BlockingIOError:
            return offset, True
        if sent == 0:
            raise _short(offset, end)
        offset += sent
    return offset, False


async def sendfile_thread(conn: Conn, fd: int, offset: int, count: int, cap: int) -> None:
    """The sendfile calls run in loop.run_in_executor (default pool) on the non-blocking dup;
    a job returns at EAGAIN and the loop waits for writability before the next job."""
    await conn.head_flushed()
    loop = asyncio.get_running_loop()
    out = os.dup(conn.sock_fd)
    try:
        end = offset + count
        while offset < end:
            offset, eagain = await loop.run_in_executor(
                None, _sendfile_until_eagain, out, fd, offset, end, cap
            )
            if eagain:
                await _writable(loop, out)
    finally:
        os.close(out)


# 4: a dedicated thread that polls for itself ------------------------------------------------


def _sendfile_polling(out: int, fd: int, offset: int, end: int, cap: int) -> None:
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, min(cap, end - offset))
        except BlockingIOError:
            if not poller.poll(POLL_TIMEOUT_MS):
                raise TimeoutError("socket not writable for 60 s") from None
            continue
        if sent == 0:
            raise _short(offset, end)
        offset += sent


async def sendfile_thread_blocking(
    conn: Conn, fd: int, offset: int, count: int, cap: int | None
) -> None:
    """One thread per stream (STREAM_POOL) runs the whole transfer: sendfile of ``cap`` bytes
    (None: everything left, as socket.sendfile asks) on the non-blocking dup, poll(POLLOUT)
    on EAGAIN, never back to the loop until done."""
    await conn.head_flushed()
    out = os.dup(conn.sock_fd)
    try:
        await asyncio.get_running_loop().run_in_executor(
            STREAM_POOL, _sendfile_polling, out, fd, offset, offset + count, cap or count
        )
    finally:
        os.close(out)


# 5: pread into preallocated buffers in a thread, write through the transport ---------------


async def pread_write(conn: Conn, fd: int, offset: int, count: int, n: int) -> None:
    """os.preadv into one of 3 preallocated n-byte buffers (default pool), then
    transport.write(memoryview) and drain, with write-buffer limits high=2n, low=n.

    uvloop keeps a reference to a written memoryview until the bytes reach the socket (no
    copy), so a buffer may be refilled only once it has been sent: after drain() at most
    high=2n bytes are pending, i.e. only the last two chunks, so the buffer written three
    chunks ago (the next to fill) is free."""
    loop = asyncio.get_running_loop()
    conn.transport.set_write_buffer_limits(high=2 * n, low=n)
    bufs = [memoryview(bytearray(n)) for _ in range(3)]
    end, i = offset + count, 0
    while offset < end:
        view = bufs[i % 3][: min(n, end - offset)]
        got = await loop.run_in_executor(None, os.preadv, fd, [view], offset)
        if got == 0:
            raise _short(offset, end)
        conn.transport.write(view[:got])
        offset += got
        i += 1
        await conn.drain()
    # close() flushes what is still buffered; the client times the last byte it receives.


# 6: socket.socket.sendfile in a thread -------------------------------------------------------


def _socket_sendfile(out: int, path: str, offset: int, count: int, blocking: bool) -> None:
    s = socket.socket(fileno=out)  # owns the dup from here on
    try:
        if blocking:
            # O_NONBLOCK lives on the file description, which the dup shares with uvloop's
            # socket: uvloop sees a blocking socket until it is set back below.
            s.setblocking(True)
        else:
            # A timeout keeps the descriptor non-blocking (Python polls before each call).
            s.settimeout(POLL_TIMEOUT_MS / 1000)
        with open(path, "rb") as f:  # its own file position: socket.sendfile seeks
            sent = s.sendfile(f, offset, count)
        if sent != count:
            raise _short(offset + sent, offset + count)
    finally:
        try:
            if blocking:
                s.setblocking(False)
        finally:
            s.close()


async def socket_sendfile(conn: Conn, fd: int, offset: int, count: int, blocking: bool) -> None:
    """socket.socket.sendfile (which sends up to 1 GiB per os.sendfile call) on a dup in a
    STREAM_POOL thread; loop.sock_sendfile is not implemented on uvloop."""
    await conn.head_flushed()
    out = os.dup(conn.sock_fd)
    await asyncio.get_running_loop().run_in_executor(
        STREAM_POOL, _socket_sendfile, out, conn.path, offset, count, blocking
    )


VARIANTS: dict[str, Variant] = {
    "sendfile-loop-whole": functools.partial(sendfile_loop, cap=None),
    "sendfile-loop-1mib": functools.partial(sendfile_loop, cap=1 * MIB),
    "sendfile-loop-4mib": functools.partial(sendfile_loop, cap=4 * MIB),
    "sendfile-loop-16mib": functools.partial(sendfile_loop, cap=16 * MIB),
    "sendfile-thread-4mib": functools.partial(sendfile_thread, cap=4 * MIB),
    "sendfile-thread-16mib": functools.partial(sendfile_thread, cap=16 * MIB),
    "sendfile-thread-blocking": functools.partial(sendfile_thread_blocking, cap=16 * MIB),
    "sendfile-thread-blocking-whole": functools.partial(sendfile_thread_blocking, cap=None),
    "pread-write-1mib": functools.partial(pread_write, n=1 * MIB),
    "pread-write-4mib": functools.partial(pread_write, n=4 * MIB),
    "socket.sendfile": functools.partial(socket_sendfile, blocking=True),
    "socket.sendfile-timeout": functools.partial(socket_sendfile, blocking=False),
}


async def _serve(variant: str, path: str) -> None:
    import uvloop

    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop), type(loop)
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    fn = VARIANTS[variant]
    server = await loop.create_server(lambda: Conn(fn, path, fd, size), "127.0.0.1", 0, backlog=128)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def serve(variant: str, path: str) -> None:
    import uvloop

    uvloop.run(_serve(variant, path))


# --------------------------------------------------------------------------- driver side


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    f = raw[raw.rfind(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / TICK


def ensure_file(workdir: Path, size: int) -> tuple[Path, str]:
    """The test file (random bytes, made once) and its sha256; reading it warms the cache."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"blob-{size // MIB}mib.bin"
    sidecar = path.with_suffix(".sha256")
    if not path.exists() or path.stat().st_size != size or not sidecar.exists():
        log(f"writing {size // MIB} MiB of random bytes to {path}")
        h = hashlib.sha256()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(size // MIB):
                chunk = os.urandom(MIB)
                h.update(chunk)
                f.write(chunk)
            rest = os.urandom(size % MIB)
            h.update(rest)
            f.write(rest)
        tmp.rename(path)
        sidecar.write_text(h.hexdigest())
    t0 = time.perf_counter()
    buf = bytearray(16 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    log(f"page cache warm: read {size // MIB} MiB in {time.perf_counter() - t0:.2f} s")
    return path, sidecar.read_text().strip()


class Server:
    def __init__(self, variant: str, path: Path, logdir: Path) -> None:
        self.variant = variant
        self.log_path = logdir / f"{variant}.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                variant,
                "--file",
                str(path),
            ],
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{variant}: server did not start: {self.log_path.read_text()}")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}/blob"

    def errors(self) -> list[str]:
        self.log_file.flush()
        return [ln for ln in self.log_path.read_text().splitlines() if ln.startswith("ERROR")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def client(url: str, concurrency: int, sha256: bool = False, timeout: float = 60) -> dict[str, Any]:
    """bench/client.py in its own process, as bench/run.py runs it."""
    cmd = [sys.executable, str(BENCH / "client.py"), url, "--concurrency", str(concurrency)]
    cmd += ["--timeout", str(timeout)] + (["--sha256"] if sha256 else [])
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed: {proc.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(proc.stdout)
    return res


UVLOOP_READ = 256000  # uvloop's UV_STREAM_RECV_BUF_SIZE: libuv reads again after a full read


def loop_stall_check(port: int, attempts: int = 24, patience: float = 2.0) -> dict[str, Any]:
    """Whether a client that sends bytes during its transfer stalls the server's loop.

    Client A requests the file and does not read it (the server's send waits on a full
    socket), then sends k * 256,000 bytes for k = 1, 2, ...; after each, client B asks for
    the file and times its first byte. libuv reads a readable socket until a read comes
    back short, so once a read fills uvloop's 256,000-byte buffer it reads again: on a
    socket whose shared file description was made blocking (socket.sendfile on a blocking
    dup) that read blocks the loop thread until A sends more or closes, and B waits."""
    request = b"GET /blob HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    worst = 0.0
    with socket.create_connection(("127.0.0.1", port), timeout=patience) as a:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        a.sendall(request)
        time.sleep(0.3)
        for k in range(1, attempts + 1):
            a.sendall(b"x" * (UVLOOP_READ * k))
            time.sleep(0.05)
            t0 = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=patience) as b:
                    b.sendall(request)
                    b.recv(64)
                first = time.perf_counter() - t0
            except OSError:  # TimeoutError included: no byte within patience
                first = float("inf")
            worst = max(worst, first)
            if first > patience / 2:
                return {"stalled": True, "attempt": k, "worst_first_byte_s": None}
    return {"stalled": False, "attempts": attempts, "worst_first_byte_s": round(worst, 4)}


def measure(server: Server, concurrency: int) -> dict[str, Any]:
    cpu0 = proc_cpu(server.proc.pid)
    res = client(server.url, concurrency)
    cpu = proc_cpu(server.proc.pid) - cpu0
    bad = [s for s in res["streams"] if not s.get("ok")]
    if bad:
        raise RuntimeError(f"{len(bad)} of {concurrency} streams failed: {bad[:2]}")
    return {
        "wall": res["wall"],
        "bytes": res["bytes"],
        "mb_s": res["bytes"] / res["wall"] / 1e6,
        "cpu": cpu,
        "stream_ends": sorted(round(s["end"], 3) for s in res["streams"]),
        "loadavg": os.getloadavg()[0],
    }


def summarize(runs1: list[dict[str, Any]], runs20: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(xs: list[float]) -> float | None:
        return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else None

    def cpu_per_gib(runs: list[dict[str, Any]]) -> float | None:
        total = sum(r["bytes"] for r in runs)
        return sum(r["cpu"] for r in runs) / (total / GIB) if total else None

    out: dict[str, Any] = {}
    if runs1:
        mbs = [r["mb_s"] for r in runs1]
        out.update(
            mb_s_1=statistics.median(mbs), spread_1=spread(mbs), cpu_gib_1=cpu_per_gib(runs1)
        )
    if runs20:
        walls = [r["wall"] for r in runs20]
        out.update(
            wall_20=statistics.median(walls),
            agg_mb_s_20=statistics.median(r["mb_s"] for r in runs20),
            spread_20=spread(walls),
            cpu_gib_20=cpu_per_gib(runs20),
        )
    out["cpu_gib"] = cpu_per_gib(runs1 + runs20)
    return out


def render(results: dict[str, Any], size: int, concurrency: int) -> str:
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    n = concurrency
    cols = [
        "variant",
        "1-stream MB/s",
        f"{n}-stream wall s",
        f"{n}-stream agg MB/s",
        "CPU s/GiB",
        "(1-stream)",
        f"({n}-stream)",
        "loop stall",
    ]
    rows = [cols]
    for name, r in results.items():
        s = r.get("summary", {})
        if r.get("failed"):
            rows.append([name, "failed: " + r["failed"][:60], "", "", "", "", "", ""])
            continue
        stall = r.get("loop_stall", {}).get("stalled")
        rows.append(
            [
                name,
                f(s.get("mb_s_1"), ".0f"),
                f(s.get("wall_20"), ".2f"),
                f(s.get("agg_mb_s_20"), ".0f"),
                f(s.get("cpu_gib"), ".3f"),
                f(s.get("cpu_gib_1"), ".3f"),
                f(s.get("cpu_gib_20"), ".3f"),
                "-" if stall is None else "STALLS (rejected)" if stall else "no",
            ]
        )
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(cols))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"file {size // MIB} MiB (page cache), MB = 10^6 bytes; medians; CPU = server process "
        f"utime+stime per GiB received by the clients (all runs; then 1-stream, {n}-stream only);\n"
        "loop stall: a client sending bytes mid-transfer blocks every other connection "
        "(loop_stall_check)"
    )
    return "\n".join(lines)


def git_commit() -> str:
    def git(*args: str) -> str:
        p = subprocess.run(["git", "-C", str(BENCH), *args], capture_output=True, text=True)
        return p.stdout.strip()

    dirty = git("status", "--porcelain", "--", Path(__file__).name)
    return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--serve", metavar="VARIANT", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3, help="1-stream runs per variant (default 3)")
    p.add_argument("--runs20", type=int, default=2, help="concurrent runs per variant (default 2)")
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--only", help="comma-separated variants: " + ", ".join(VARIANTS))
    p.add_argument("--workdir", default="/tmp/kernel-paths")
    p.add_argument("--no-verify", action="store_true", help="skip the hashed GET per variant")
    p.add_argument("--no-stall-check", action="store_true", help="skip loop_stall_check")
    p.add_argument("--quick", action="store_true", help="256 MiB, 1 run each (smoke test)")
    p.add_argument("--out", default=str(BENCH / "results"), help="directory for the JSON")
    a = p.parse_args()
    if a.serve:
        serve(a.serve, a.file)
        return 0
    if a.quick:
        a.size_mib, a.runs, a.runs20 = 256, 1, 1
    names = list(VARIANTS) if not a.only else [v.strip() for v in a.only.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")

    size = a.size_mib * MIB
    workdir = Path(a.workdir)
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    meta: dict[str, Any] = {
        "mode": "quick" if a.quick else "full",
        "size_mib": a.size_mib,
        "runs": a.runs,
        "runs20": a.runs20,
        "concurrency": a.concurrency,
        "variants": names,
        "commit": git_commit(),
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
    }
    try:
        import uvloop

        meta["uvloop"] = uvloop.__version__
    except ImportError:
        return print("uvloop is not installed in this interpreter", file=sys.stderr) or 2
    for key in ("net/ipv4/tcp_wmem", "net/ipv4/tcp_rmem", "net/core/wmem_max"):
        with contextlib.suppress(OSError):
            meta[key.replace("/", ".")] = Path("/proc/sys", key).read_text().split()
    path, digest = ensure_file(workdir, size)

    results: dict[str, dict[str, Any]] = {n: {"runs1": [], "runs20": []} for n in names}
    servers: dict[str, Server] = {}
    try:
        for name in names:
            server = servers[name] = Server(name, path, logdir)
            r = results[name]
            try:
                if not a.no_verify:
                    res = client(server.url, 1, sha256=True)
                    got = res["streams"][0].get("sha256")
                    if not res["ok"] or got != digest:
                        raise RuntimeError(
                            f"wrong bytes: {res['streams'][0]} errors={server.errors()[:3]}"
                        )
                if not a.no_stall_check:
                    r["loop_stall"] = loop_stall_check(server.port)
                    time.sleep(0.5)  # the hung-up transfers log their errors
                    if r["loop_stall"]["stalled"]:
                        r["rejected"] = "a client sending bytes mid-transfer stalls the loop"
                        log(f"{name}: REJECTED ({r['rejected']}); measuring it anyway")
            except Exception as exc:  # noqa: BLE001 - a failing variant is a finding
                r["failed"] = f"verify: {exc}"
                log(f"{name}: FAILED ({exc})")
            # The stall check's client hangs up mid-transfer: expected errors, not counted.
            r["check_errors"] = len(server.errors())
        for rnd in range(max(a.runs, a.runs20)):
            for name in names:
                r = results[name]
                if r.get("failed"):
                    continue
                try:
                    if rnd < a.runs:
                        m = measure(servers[name], 1)
                        r["runs1"].append(m)
                        log(
                            f"round {rnd + 1} {name}: 1 stream {m['mb_s']:.0f} MB/s, "
                            f"cpu {m['cpu']:.2f} s"
                        )
                    if rnd < a.runs20:
                        m = measure(servers[name], a.concurrency)
                        r["runs20"].append(m)
                        log(
                            f"round {rnd + 1} {name}: {a.concurrency} streams {m['wall']:.2f} s, "
                            f"{m['mb_s']:.0f} MB/s, cpu {m['cpu']:.2f} s"
                        )
                except Exception as exc:  # noqa: BLE001
                    r["failed"] = f"{exc}"
                    log(f"{name}: FAILED ({exc})")
        for name in names:
            results[name]["server_errors"] = servers[name].errors()[results[name]["check_errors"] :]
            results[name]["summary"] = summarize(results[name]["runs1"], results[name]["runs20"])
    finally:
        for s in servers.values():
            s.stop()

    meta["loadavg_after"] = os.getloadavg()
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    table = render(results, size, a.concurrency)
    print(table)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-kernel-paths.json"
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=1))
    log(f"wrote {out} ({meta['seconds']} s)")
    return 1 if any(r.get("failed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
