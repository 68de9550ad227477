"""Push throughput: one large blob uploaded to a hosted repository of pullthrough and to the
reference registry (Debian's docker-registry, not in proxy mode), side by side.

Two ways, as clients push: monolithic (``POST``, then one ``PUT ?digest=`` with the whole
body) and chunked (``POST``, ``PATCH`` chunks with ``Content-Range``, ``PUT ?digest=``). The
time is from the first byte sent to the 201 (the registry has verified and stored the blob).
The servers' order alternates per run. Server CPU is the process tree's user+system seconds
over the push. Writes ``bench/results/<time>-push.json``.

    python bench/push.py               # 1 GiB, 64 MiB chunks, 2 runs, filesystem
    python bench/push.py --size 256MiB --runs 1
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import DockerRegistry, Pullthrough, Server, stop_all, tree_cpu  # noqa: E402

MiB = 1024 * 1024
SEND = 4 * MiB
HOSTED = {
    "hosted": {"repositories": ["bench"]},
    "access": [
        {"repositories": ["**"]},
        {"repositories": ["bench/**"], "actions": ["pull", "push"]},
    ],
}
REF, PT = "reference", "pullthrough"
NO_UPSTREAM = "http://127.0.0.1:9"  # hosted names never reach it


def _size(text: str) -> int:
    units = {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _blob(path: Path, size: int) -> str:
    """A file of ``size`` random bytes (made once), and its digest."""
    hasher = hashlib.sha256()
    with open(path, "wb") as out, open("/dev/urandom", "rb") as rand:
        left = size
        while left:
            chunk = rand.read(min(SEND, left))
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return f"sha256:{hasher.hexdigest()}"


def _request(
    server: Server,
    method: str,
    path: str,
    body: Path | None = None,
    span: tuple[int, int] = (0, 0),
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(server.host, timeout=600)
    start, length = span
    conn.putrequest(method, path)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    if body is not None and length:
        with open(body, "rb") as src:
            src.seek(start)
            left = length
            while left:
                data = src.read(min(SEND, left))
                conn.sock.sendall(data)
                left -= len(data)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def _target(location: str, digest: str | None = None) -> str:
    """The path and query of an upload's ``Location`` (absolute or not), with ``digest``."""
    parts = urlsplit(location)
    query = parts.query
    if digest is not None:
        query = f"{query}&digest={digest}" if query else f"digest={digest}"
    return parts.path + (f"?{query}" if query else "")


def monolithic(server: Server, repo: str, blob: Path, digest: str, size: int) -> float:
    """POST for a session, then one PUT with the whole body (the reference registry
    refuses a body on POST; clients push this way)."""
    began = time.monotonic()
    resp = _request(server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, (server.name, resp.status)
    resp = _request(
        server, "PUT", _target(resp.getheader("Location") or "", digest), blob, (0, size)
    )
    assert resp.status == 201, (server.name, resp.status)
    return time.monotonic() - began


def chunked(
    servers: list[Server], repo: str, blob: Path, digest: str, size: int, chunk: int
) -> float:
    """POST, PATCHes of ``chunk`` bytes, PUT; request i goes to ``servers[i % len]``."""
    turn = iter(servers[i % len(servers)] for i in range(1 << 30))
    began = time.monotonic()
    server = next(turn)
    resp = _request(server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, (server.name, resp.status)
    location = resp.getheader("Location") or ""
    for start in range(0, size, chunk):
        length = min(chunk, size - start)
        server = next(turn)
        resp = _request(
            server,
            "PATCH",
            _target(location),
            blob,
            (start, length),
            {
                "Content-Range": f"{start}-{start + length - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert resp.status == 202, (server.name, resp.status)
        location = resp.getheader("Location") or location
    server = next(turn)
    resp = _request(server, "PUT", _target(location, digest))
    assert resp.status == 201, (server.name, resp.status)
    return time.monotonic() - began


def push(way: str, servers: list[Server], repo: str, blob: Path, digest: str, args: Any) -> float:
    if way == "monolithic":
        return monolithic(servers[0], repo, blob, digest, args.size)
    return chunked(servers, repo, blob, digest, args.size, args.chunk)


# --------------------------------------------------------------------------- filesystem


def run_filesystem(
    work: Path, blob: Path, digest: str, args: Any, record: Callable[..., None]
) -> None:
    """Both servers started once on their own directories; every push to a new repository."""
    reference = DockerRegistry(work / "reference", REF).start()
    mirror = Pullthrough(
        work / "pullthrough", PT, remoteurl=NO_UPSTREAM, src=args.src, mirror_extra=HOSTED
    ).start()
    for run in range(args.runs):
        order = [reference, mirror] if run % 2 == 0 else [mirror, reference]
        for server in order:
            for way in ("monolithic", "chunked"):
                cpu0 = tree_cpu(server.pid)
                seconds = push(way, [server], f"bench/{way}-{run}", blob, digest, args)
                record(run, server.name, way, seconds, tree_cpu(server.pid) - cpu0)


# --------------------------------------------------------------------------- report


def summary(rows: list[dict[str, Any]], args: Any) -> None:
    print(
        f"\npush of {args.size_text} (chunks of {args.chunk_text}), {args.runs} runs; "
        "MiB/s best and median, ratio of the bests to the reference's, medians of CPU s:"
    )
    print(f"  {'way':10}  {'server':24} {'best':>7} {'median':>7} {'x ref':>6} {'cpu':>6}")
    for way in ("monolithic", "chunked"):
        best: dict[str, float] = {}
        for side in (REF, PT):
            mine = [r for r in rows if r["server"] == side and r["way"] == way]
            best[side] = max(r["mib_s"] for r in mine)
            median = statistics.median(r["mib_s"] for r in mine)
            cpu = statistics.median(r["cpu_s"] for r in mine)
            line = (
                f"  {way:10}  {side:24} {best[side]:7.1f} {median:7.1f} "
                f"{best[side] / best[REF]:5.2f}x {cpu:6.1f}"
            )
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--chunk", default="64MiB")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--pullthrough-src",
        type=Path,
        default=BENCH.parent / "src",
        help="the pullthrough package run (default: this checkout's src/)",
    )
    args = parser.parse_args()
    args.size_text, args.chunk_text = args.size, args.chunk
    args.size, args.chunk = _size(args.size), _size(args.chunk)
    args.src = args.pullthrough_src.resolve()
    rows: list[dict[str, Any]] = []

    def record(run: int, side: str, way: str, seconds: float, cpu: float, **more: float) -> None:
        rate = args.size / MiB / seconds
        rows.append(
            {"run": run, "server": side, "way": way, "seconds": seconds, "mib_s": rate}
            | {"cpu_s": round(cpu, 2)}
            | {k: round(v, 2) for k, v in more.items()}
        )
        extra = "".join(f" {k} {v:6.1f}" for k, v in more.items())
        print(
            f"run {run} {side:24} {way:10} {seconds:7.2f} s {rate:8.1f} MiB/s cpu {cpu:6.1f}{extra}"
        )

    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        work = Path(tmp)
        blob = work / "blob"
        digest = _blob(blob, args.size)
        try:
            run_filesystem(work, blob, digest, args, record)
        finally:
            stop_all()
    summary(rows, args)
    commit = subprocess.run(
        ["git", "-C", str(BENCH.parent), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    doc = {
        "size": args.size,
        "chunk": args.chunk,
        "commit": commit,
        "pullthrough_src": str(args.src),
        "runs": rows,
    }
    (out / f"{stamp}-push.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
