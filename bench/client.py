"""Blob-download client: N concurrent GETs of one URL, timed per stream.

Run as a child process so its CPU never competes with the driver's bookkeeping:
``python client.py URL [URL ...] --concurrency 20 [--sha256]`` prints one JSON document;
with several URLs, stream ``i`` fetches ``URL[i % len(URLs)]`` (round-robin).

Each stream is a fresh connection (``Connection: close``). Timings are seconds from the
moment all threads are released together: ``ttfb`` (first response byte, i.e. the status
line), ``first_body`` (first body byte) and ``end`` (last body byte). Bodies are read with
``recv_into`` a 1 MiB buffer and discarded (hashed with ``--sha256``); a stream succeeds only
with status 200 and exactly Content-Length bytes. ``https://`` URLs are verified against
``--cafile`` (the handshake counts in the timings, as it does for any client).

``--follow-redirects`` follows a 301/302/303/307/308 with a ``Location`` (a blob GET a mirror
answers with a presigned URL on its bucket): a new connection to that URL, up to 5 hops, all
inside the stream's timings (``ttfb`` stays the first response's; ``first_body`` and ``end``
are the final response's; ``redirects`` counts the hops). Without it a redirect is a failed
stream.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import socket
import ssl
import sys
import threading
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

BUF = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def _read_head(sock: socket.socket, t0: float, out: dict[str, Any]) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise OSError("connection closed before the response head")
        if not buf:
            out["ttfb"] = time.perf_counter() - t0
        buf += data
        if len(buf) > 1 << 20:
            raise OSError("response head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.startswith("127.") or host == "localhost"


def fetch(
    url: str,
    headers: list[str],
    want_hash: bool,
    timeout: float,
    gate: threading.Barrier,
    t0_box: list[float],
    out: dict[str, Any],
    tls: ssl.SSLContext | None = None,
    follow: bool = False,
) -> None:
    hasher = hashlib.sha256() if want_hash else None
    gate.wait()
    t0 = t0_box[0]
    out["redirects"] = 0
    try:
        while True:
            location = _get(url, headers, hasher, timeout, t0, out, tls, follow)
            if location is None:
                break
            if out["redirects"] >= MAX_REDIRECTS:
                raise OSError(f"more than {MAX_REDIRECTS} redirects")
            url = urljoin(url, location)
            if not _loopback(url):
                raise OSError(f"redirect off loopback refused: {url[:80]}")
            out["redirects"] += 1
            # The next hop is a new request: its headers were for the mirror (a presigned
            # URL carries its own authorisation).
            headers = []
    except OSError as exc:
        out["end"] = time.perf_counter() - t0
        out["ok"] = False
        out["error"] = str(exc)


def _get(
    url: str,
    headers: list[str],
    hasher: Any,
    timeout: float,
    t0: float,
    out: dict[str, Any],
    tls: ssl.SSLContext | None,
    follow: bool,
) -> str | None:
    """One request on a fresh connection; the body is read into ``out``. Returns the
    ``Location`` of a redirect to follow (its body unread), else None."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if https else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: close",
        "User-Agent: pullthrough-bench",
        *headers,
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if https:
            ctx = tls or ssl.create_default_context()
            sock = stack.enter_context(ctx.wrap_socket(sock, server_hostname=host))
        sock.sendall(request)
        first_ttfb = out.get("ttfb")
        head, rest = _read_head(sock, t0, out)
        if first_ttfb is not None:  # a redirect's target: ttfb stays the first response's
            out["ttfb_final"], out["ttfb"] = out["ttfb"], first_ttfb
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        out["status"] = int(status_line.split(" ")[1])
        hdrs = {}
        for h in header_lines:
            k, _, v = h.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if follow and out["status"] in REDIRECTS and hdrs.get("location"):
            return hdrs["location"]
        if "chunked" in hdrs.get("transfer-encoding", ""):
            raise OSError("chunked response: the bench expects Content-Length on blobs")
        expected = int(hdrs.get("content-length", "-1"))
        out["expected"] = expected
        got = len(rest)
        if rest:
            out["first_body"] = time.perf_counter() - t0
            if hasher:
                hasher.update(rest)
        buf = bytearray(BUF)
        view = memoryview(buf)
        # Bounded: every iteration consumes >= 1 byte or ends; the socket has a timeout.
        while expected < 0 or got < expected:
            n = sock.recv_into(view, min(BUF, expected - got) if expected >= 0 else BUF)
            if n == 0:
                break
            if got == 0:
                out["first_body"] = time.perf_counter() - t0
            got += n
            if hasher:
                hasher.update(view[:n])
        out["end"] = time.perf_counter() - t0
        out["bytes"] = got
        out["ok"] = out["status"] == 200 and (expected < 0 or got == expected)
        if hasher:
            out["sha256"] = hasher.hexdigest()
    return None


def run(
    urls: list[str],
    concurrency: int,
    headers: list[str],
    want_hash: bool,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    follow: bool = False,
) -> dict[str, Any]:
    t0_box = [0.0]
    gate = threading.Barrier(concurrency + 1)
    results: list[dict[str, Any]] = [{} for _ in range(concurrency)]
    threads = [
        threading.Thread(
            target=fetch,
            args=(urls[i % len(urls)], headers, want_hash, timeout, gate, t0_box, r, tls, follow),
        )
        for i, r in enumerate(results)
    ]
    for t in threads:
        t.start()
    t0_box[0] = time.perf_counter()
    gate.wait()
    for t in threads:
        t.join(timeout + 5)
    wall = max((r.get("end", 0.0) for r in results), default=0.0)
    return {
        "url": urls[0] if len(urls) == 1 else urls,
        "concurrency": concurrency,
        "wall": wall,
        "ok": all(r.get("ok") for r in results),
        "bytes": sum(r.get("bytes", 0) for r in results),
        "streams": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description="concurrent blob GETs, timed")
    p.add_argument("url", nargs="+")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--sha256", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0, help="socket timeout per read")
    p.add_argument("--cafile", help="CA certificate(s) to verify https:// URLs against")
    p.add_argument(
        "--follow-redirects",
        action="store_true",
        help="follow 3xx Location (loopback only), timed within the stream",
    )
    a = p.parse_args()
    for url in a.url:
        if not _loopback(url):
            p.error("loopback URLs only")
    tls = ssl.create_default_context(cafile=a.cafile) if a.cafile else None
    res = run(a.url, a.concurrency, a.header, a.sha256, a.timeout, tls, a.follow_redirects)
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
