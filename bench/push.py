"""Push throughput: one large blob uploaded to a hosted repository of pullthrough and to the
reference registry (Debian's docker-registry, not in proxy mode), side by side.

Two ways, as clients push: monolithic (``POST``, then one ``PUT ?digest=`` with the whole
body) and chunked (``POST``, ``PATCH`` chunks with ``Content-Range``, ``PUT ?digest=``). The
time is from the first byte sent to the 201 (the registry has verified and stored the blob).
The servers' order alternates per run. Server CPU is the process tree's user+system seconds
over the push. Writes ``bench/results/<time>-push.json``.

``--s3``: both store in buckets of one S3 server (radosgw, ``tests.support.s3_server``), a
fresh bucket and server for every push, so the 201 includes the upload into the bucket and
no push finds its blob already stored. One more row, ``pullthrough, 3 replicas``: three
replicas on one bucket and one Redis, the chunked upload's requests sent round robin (POST to
the first, each PATCH to the next, the PUT to the one after), as behind a load balancer.

    python bench/push.py               # 1 GiB, 64 MiB chunks, 2 runs, filesystem
    python bench/push.py --size 256MiB --runs 1
    python bench/push.py --s3 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import (  # noqa: E402
    DockerRegistry,
    Pullthrough,
    Server,
    clean_env,
    s3_mirror_extra,
    stop_all,
    tree_cpu,
)

sys.path.insert(0, str(BENCH.parent))

MiB = 1024 * 1024
GiB = 1024 * MiB
SEND = 4 * MiB
HOSTED = {
    "hosted": {"repositories": ["bench"]},
    "access": [
        {"repositories": ["**"]},
        {"repositories": ["bench/**"], "actions": ["pull", "push"]},
    ],
}
REF, PT, PT3 = "reference", "pullthrough", "pullthrough, 3 replicas"
REPLICAS = 3
S3_ROOT = "/bench"  # rootdirectory of both registries in their buckets
NO_UPSTREAM = "http://127.0.0.1:9"  # hosted names never reach it


def _size(text: str) -> int:
    units = {"KiB": 1024, "MiB": MiB, "GiB": GiB}
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


# --------------------------------------------------------------------------- S3


class S3Run:
    """One radosgw for the whole run; a bucket, and servers storing in it, per push."""

    def __init__(self, server: Any, work: Path, src: Path | None) -> None:
        from s3admin import S3Admin

        self.server = server
        self.admin = S3Admin(server)
        self.work = work
        self.src = src
        self.counter = 0

    def cpu(self) -> float:
        """CPU seconds of radosgw, the OSD and the monitor."""
        run = self.server.root / "run"
        total = 0.0
        for name in ("client.rgw", "osd.0", "mon.a"):
            with contextlib.suppress(OSError, ValueError):
                total += tree_cpu(int((run / f"{name}.pid").read_text().strip()))
        return total

    @contextlib.contextmanager
    def servers(self, side: str, run: int, way: str) -> Iterator[tuple[list[Server], Any]]:
        """The servers of ``side`` on a new bucket (and a Redis for the replicas), and
        whether a digest is in that bucket; all stopped and the bucket dropped after."""
        from tests.cluster.redis_server import RedisServer

        self.counter += 1
        slug = {REF: "ref", PT: "pt", PT3: "pt3"}[side]
        bucket = self.admin.create(f"push-{run}-{way[:4]}-{slug}-{self.counter}")
        base = self.work / f"{self.counter:03d}-{slug}-{way}"
        storage = self.admin.storage(bucket, S3_ROOT)
        redis = RedisServer(base / "redis").start() if side == PT3 else None
        started: list[Server] = []
        try:
            for i in range(REPLICAS if side == PT3 else 1):
                workdir = base / f"server-{i}"
                server: Server
                if side == REF:
                    server = DockerRegistry(workdir, REF, storage_driver=storage)
                else:
                    extra = {
                        **HOSTED,
                        **s3_mirror_extra(
                            workdir / "data", "0", redis.addr if redis is not None else None
                        ),
                    }
                    server = Pullthrough(
                        workdir,
                        PT,
                        remoteurl=NO_UPSTREAM,
                        src=self.src,
                        storage=storage,
                        mirror_extra=extra,
                    )
                started.append(server.start(timeout=60))
            yield started, self.admin.probe(bucket, S3_ROOT)
        finally:
            for server in started:
                server.stop()
            if redis is not None:
                redis.stop()
            self.drop(bucket)

    def drop(self, bucket: str) -> None:
        """Delete the bucket, then have radosgw free its objects now (``gc process``), not
        within the next seconds, when that work would land in another push's time."""
        from tests.support.s3_server import RADOSGW_ADMIN

        self.admin.drop(bucket)
        conf = str(self.server.conf_path)
        subprocess.run(
            [RADOSGW_ADMIN, "-c", conf, "-n", "client.rgw", "gc", "process", "--include-all"],
            capture_output=True,
            timeout=120,
            env=clean_env(),
            check=False,
        )


def run_s3(
    work: Path, blob: Path, digest: str, args: Any, record: Callable[..., None]
) -> dict[str, Any]:
    from tests.support.s3_server import CephS3, available

    if not available():
        raise SystemExit("--s3: radosgw not installed (apt-get install radosgw ceph-mon ceph-osd)")
    # As bench/run.py: memstore keeps objects in memory; the reference's multipart upload and
    # its copy to the blob's key are both held until the bucket is dropped.
    memory = min(16 * GiB, max(4 * GiB, 12 * args.size))
    # tcp_nodelay: radosgw's default Nagle adds ~40 ms to small responses (see CephS3).
    with CephS3(work / "s3", memory_bytes=memory, tcp_nodelay=True) as server:
        s3 = S3Run(server, work / "servers", args.src)
        print(f"S3 server (radosgw) on {server.endpoint_url}, started in {server.timings}")
        for run in range(args.runs):
            sides = [REF, PT] if run % 2 == 0 else [PT, REF]
            for side in [*sides, PT3]:
                for way in ("monolithic", "chunked") if side != PT3 else ("chunked",):
                    with s3.servers(side, run, way) as (servers, stored):
                        pids = [srv.pid for srv in servers]
                        cpu0, s3cpu0 = sum(map(tree_cpu, pids)), s3.cpu()
                        seconds = push(way, servers, f"bench/{way}-{run}", blob, digest, args)
                        cpu = sum(map(tree_cpu, pids)) - cpu0
                        s3cpu = s3.cpu() - s3cpu0
                        if not stored(digest):
                            print(f"  ! {side} {way}: 201, but the blob is not in the bucket")
                    record(run, side, way, seconds, cpu, s3_cpu_s=s3cpu)
        return {"endpoint": server.endpoint_url, "memory_bytes": memory, "tcp_nodelay": True}


# --------------------------------------------------------------------------- report


def summary(rows: list[dict[str, Any]], args: Any) -> None:
    where = "S3 (radosgw)" if args.s3 else "filesystem"
    print(
        f"\npush of {args.size_text} (chunks of {args.chunk_text}) to {where}, {args.runs} runs; "
        "MiB/s best and median, ratio of the bests to the reference's, medians of CPU s:"
    )
    s3cpu = " S3 cpu" if args.s3 else ""
    print(f"  {'way':10}  {'server':24} {'best':>7} {'median':>7} {'x ref':>6} {'cpu':>6}{s3cpu}")
    for way in ("monolithic", "chunked"):
        best: dict[str, float] = {}
        for side in (REF, PT, PT3):
            mine = [r for r in rows if r["server"] == side and r["way"] == way]
            if not mine:
                continue
            best[side] = max(r["mib_s"] for r in mine)
            median = statistics.median(r["mib_s"] for r in mine)
            cpu = statistics.median(r["cpu_s"] for r in mine)
            line = (
                f"  {way:10}  {side:24} {best[side]:7.1f} {median:7.1f} "
                f"{best[side] / best[REF]:5.2f}x {cpu:6.1f}"
            )
            if args.s3:
                line += f" {statistics.median(r['s3_cpu_s'] for r in mine):6.1f}"
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--chunk", default="64MiB")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--s3", action="store_true", help="store in buckets of a local radosgw")
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

    s3: dict[str, Any] | None = None
    loadavg_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        work = Path(tmp)
        blob = work / "blob"
        digest = _blob(blob, args.size)
        try:
            if args.s3:
                s3 = run_s3(work, blob, digest, args, record)
            else:
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
        "storage": "s3" if args.s3 else "filesystem",
        "commit": commit,
        "pullthrough_src": str(args.src),
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        **({"s3": s3} if s3 else {}),
        "runs": rows,
    }
    (out / f"{stamp}-push{'-s3' if args.s3 else ''}.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
