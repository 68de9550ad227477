"""A byte- and request-counting TCP proxy for standing between a mirror and its upstream.

Run as its own process (``python countproxy.py --target 127.0.0.1:PORT``): it listens on a
free loopback port, forwards every connection to the target, and counts

* bytes upstream -> client (``down_bytes``), moved with ``os.splice`` through a pipe so the
  proxy adds little CPU even at GiB/s;
* bytes client -> upstream, and every HTTP request line in that direction (method + path),
  classified as blob / manifest / other. Requests are parsed from the byte stream, so
  keep-alive and pipelining are counted correctly (bodies skipped by Content-Length).

With ``--opaque`` (a TLS upstream: the proxy passes the encrypted stream through unchanged)
no request is parsed or counted; bytes still are, TLS records and handshakes included.

It answers one-line commands (``stats``, ``reset``) on a second loopback port with a JSON
line. ``CountingProxy`` below starts it as a child process and talks to it.

Connections are handled by pooled threads (blocking sockets), two per connection.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

LOOPBACK = "127.0.0.1"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, absent from older Pythons' fcntl module
PIPE_SIZE = 1 << 20
MAX_HEADER = 64 * 1024
KEEP_RECENT = 2000


def classify(method: str, target: str) -> str:
    path = target.split("?", 1)[0]
    if "/blobs/uploads" in path:
        kind = "upload"
    elif "/blobs/" in path:
        kind = "blob"
    elif "/manifests/" in path:
        kind = "manifest"
    elif path.rstrip("/") == "/v2":
        kind = "base"
    else:
        kind = "other"
    return f"{method} {kind}"


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.reset()

    def reset(self) -> dict[str, Any]:
        with self.lock:
            old = self._snapshot() if hasattr(self, "down") else {}
            self.down = 0
            self.up = 0
            self.requests: dict[str, int] = {}
            self.recent: list[str] = []
            self.connections = 0
            self.last_byte = time.monotonic()
            return old

    def _snapshot(self) -> dict[str, Any]:
        return {
            "down_bytes": self.down,
            "up_bytes": self.up,
            "requests": dict(self.requests),
            "blob_gets": self.requests.get("GET blob", 0),
            "connections": self.connections,
            "open_connections": self.open,
            "idle_seconds": round(time.monotonic() - self.last_byte, 3),
            "recent": list(self.recent[-50:]),
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self._snapshot()

    def add_down(self, n: int) -> None:
        with self.lock:
            self.down += n
            self.last_byte = time.monotonic()

    def add_up(self, n: int) -> None:
        with self.lock:
            self.up += n
            self.last_byte = time.monotonic()

    def request(self, method: str, target: str) -> None:
        key = classify(method, target)
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            self.recent.append(f"{method} {target}")
            if len(self.recent) > KEEP_RECENT:
                del self.recent[: KEEP_RECENT // 2]


class RequestParser:
    """Finds request heads in a client->server byte stream; skips Content-Length bodies."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buf = b""
        self.skip = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        for _ in range(10_000):  # bounded: a few requests per read at most
            if self.skip:
                take = min(self.skip, len(self.buf))
                self.buf = self.buf[take:]
                self.skip -= take
                if self.skip:
                    return
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER:
                    self.broken = True  # not HTTP we understand: stop parsing, keep proxying
                return
            head = self.buf[:end].decode("latin-1")
            self.buf = self.buf[end + 4 :]
            line, _, rest = head.partition("\r\n")
            parts = line.split(" ")
            if len(parts) >= 2:
                self.stats.request(parts[0], parts[1])
            for header in rest.split("\r\n"):
                name, _, value = header.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    self.skip = int(value.strip())


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


class Connection:
    def __init__(
        self, client: socket.socket, upstream: socket.socket, stats: Stats, opaque: bool = False
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.stats = stats
        self.opaque = opaque
        self.lock = threading.Lock()
        self.halves = 2

    def _half_done(self) -> None:
        with self.lock:
            self.halves -= 1
            last = self.halves == 0
        if last:
            _close(self.client, self.upstream)
            with self.stats.lock:
                self.stats.open -= 1

    def _abort(self) -> None:
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pump_up(self) -> None:
        """client -> upstream, parsing request heads (unless the stream is opaque)."""
        parser = RequestParser(self.stats)
        parser.broken = self.opaque
        try:
            while True:
                data = self.client.recv(256 * 1024)
                if not data:
                    with contextlib.suppress(OSError):
                        self.upstream.shutdown(socket.SHUT_WR)
                    break
                self.upstream.sendall(data)
                self.stats.add_up(len(data))
                parser.feed(data)
        except OSError:
            self._abort()
        finally:
            self._half_done()

    def pump_down(self) -> None:
        """upstream -> client, counted, zero-copy through a pipe."""
        try:
            if hasattr(os, "splice"):
                self._splice_down()
            else:  # pragma: no cover - Linux Pythons >= 3.10 have splice
                self._copy_down()
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_WR)
        except OSError:
            self._abort()
        finally:
            self._half_done()

    def _splice_down(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
            src, dst = self.upstream.fileno(), self.client.fileno()
            while True:
                n = os.splice(src, w, PIPE_SIZE)
                if n == 0:
                    return
                self.stats.add_down(n)
                left = n
                while left > 0:
                    moved = os.splice(r, dst, left)
                    if moved == 0:
                        raise OSError("client closed")
                    left -= moved
        finally:
            os.close(r)
            os.close(w)

    def _copy_down(self) -> None:
        buf = bytearray(PIPE_SIZE)
        view = memoryview(buf)
        while True:
            n = self.upstream.recv_into(view)
            if n == 0:
                return
            self.stats.add_down(n)
            self.client.sendall(view[:n])


def serve(target: tuple[str, int], opaque: bool = False) -> None:
    stats = Stats()
    pool = ThreadPoolExecutor(max_workers=2048, thread_name_prefix="pump")
    listener = socket.create_server((LOOPBACK, 0), backlog=1024)
    control = socket.create_server((LOOPBACK, 0), backlog=16)

    def accept_loop() -> None:
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection(target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with stats.lock:
                stats.open += 1
                stats.connections += 1
            conn = Connection(client, upstream, stats, opaque)
            pool.submit(conn.pump_up)
            pool.submit(conn.pump_down)

    def control_loop() -> None:
        while True:
            sock, _ = control.accept()
            with sock, sock.makefile("rwb") as f:
                for raw in f:
                    cmd = raw.decode().strip()
                    if cmd == "reset":
                        reply: dict[str, Any] = stats.reset()
                    elif cmd == "stats":
                        reply = stats.snapshot()
                    else:
                        reply = {"error": f"unknown command {cmd!r}"}
                    f.write(json.dumps(reply).encode() + b"\n")
                    f.flush()

    threading.Thread(target=control_loop, daemon=True).start()
    print(
        f"READY {listener.getsockname()[1]} {control.getsockname()[1]}",
        flush=True,
    )
    accept_loop()


class CountingProxy:
    """Starts ``countproxy.py`` as a child process in front of ``target_port``.

    ``tls=True``: the target serves TLS; ``url`` is ``https://`` and requests are not
    counted (``--opaque``)."""

    def __init__(self, target_port: int, log_path: str, tls: bool = False) -> None:
        self.target_port = target_port
        self.log_path = log_path
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.control_port = 0
        self._ctl: socket.socket | None = None
        self._ctl_file: Any = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def start(self) -> CountingProxy:
        cmd = [sys.executable, __file__, "--target", f"{LOOPBACK}:{self.target_port}"]
        if self.tls:
            cmd.append("--opaque")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"counting proxy did not start (see {self.log_path})")
        self.port, self.control_port = int(line[1]), int(line[2])
        self._ctl = socket.create_connection((LOOPBACK, self.control_port), timeout=10)
        self._ctl_file = self._ctl.makefile("rwb")
        return self

    def _ask(self, cmd: str) -> dict[str, Any]:
        self._ctl_file.write(cmd.encode() + b"\n")
        self._ctl_file.flush()
        reply: dict[str, Any] = json.loads(self._ctl_file.readline())
        return reply

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> dict[str, Any]:
        return self._ask("reset")

    def wait_idle(self, quiet: float, timeout: float) -> dict[str, Any]:
        """Wait until no byte moved for ``quiet`` seconds (at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["idle_seconds"] < quiet and time.monotonic() < deadline:
            time.sleep(min(0.1, quiet))
            stats = self.stats()
        return stats

    def stop(self) -> None:
        if self._ctl is not None:
            _close(self._ctl)
            self._ctl = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT on loopback")
    parser.add_argument(
        "--opaque", action="store_true", help="do not parse requests (a TLS stream)"
    )
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    if not host.startswith("127.") and host != "localhost":
        parser.error("target must be on loopback (127.0.0.0/8)")
    serve((host, int(port)), args.opaque)


if __name__ == "__main__":
    main()
