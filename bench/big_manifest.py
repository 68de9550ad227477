"""A cached small manifest's latency while other clients fetch a 3 MB manifest, side by side:
pullthrough (the work tree, and optionally an older commit with ``--before REF``) and the
reference mirror (docker-registry in proxy mode), over one seeded upstream, loopback only.

Large manifests (indexes of many platforms) reach several MB. A mirror that re-reads,
re-hashes or re-parses one on its event loop per request slows every other request while
they are fetched. This measures that: the median and p90 of sequential GETs of a small
cached manifest, alone and while ``--load`` clients loop GETs of the 3 MB one (bounded by
count and time). Prints a table and writes ``bench/results/<timestamp>-big-manifest.json``.

    python bench/big_manifest.py [--before a04740f] [--runs 3]
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
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from procs import LOOPBACK, DockerRegistry, Pullthrough, Server, stop_all  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def _request(
    host: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    h, _, p = host.partition(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _push_blob(host: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = _request(host, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, status
    location = headers["location"]
    location = location.split(host, 1)[-1] if "://" in location else location
    sep = "&" if "?" in location else "?"
    status, _, body = _request(
        host, "PUT", f"{location}{sep}digest={digest}", data,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 201, (status, body)
    return digest


def _push_manifest(host: str, repo: str, tag: str, doc: dict[str, Any]) -> tuple[str, int]:
    body = json.dumps(doc, separators=(",", ":")).encode()
    status, _, answer = _request(
        host, "PUT", f"/v2/{repo}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST}
    )
    assert status == 201, (status, answer[:300])
    return "sha256:" + hashlib.sha256(body).hexdigest(), len(body)


def seed(upstream: Server) -> dict[str, Any]:
    """A small image and one whose manifest is ~3 MB (62,000 annotations: many small
    objects, as in an index of many platforms), in ``library/big``."""
    config = _push_blob(upstream.host, "library/big", b'{"architecture":"amd64","os":"linux"}')
    layer = _push_blob(upstream.host, "library/big", b"layer bytes " * 100)
    base = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 37},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1200}
        ],
    }
    small, small_size = _push_manifest(upstream.host, "library/big", "small", base)
    notes = {f"org.example.platform.{i:05d}": f"linux/arch{i % 97}/v{i % 7}" for i in range(62_000)}
    doc = {**base, "annotations": notes}
    big, big_size = _push_manifest(upstream.host, "library/big", "big", doc)
    return {"small": small, "small_size": small_size, "big": big, "big_size": big_size}


def _latencies(host: str, path: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        status, _, _ = _request(host, "GET", path, headers={"Accept": OCI_MANIFEST})
        out.append(time.perf_counter() - t0)
        assert status == 200, status
    return out


def measure(mirror: Server, seeded: dict[str, Any], load: int, count: int) -> dict[str, Any]:
    small = f"/v2/library/big/manifests/{seeded['small']}"
    big = f"/v2/library/big/manifests/{seeded['big']}"
    for path in (small, big):  # cached from here on
        assert _request(mirror.host, "GET", path, headers={"Accept": OCI_MANIFEST})[0] == 200
    alone = _latencies(mirror.host, small, count)
    stop = threading.Event()
    big_gets: list[float] = []

    def loader() -> None:
        deadline = time.monotonic() + 60
        for _ in range(2000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            _request(mirror.host, "GET", big, headers={"Accept": OCI_MANIFEST})
            big_gets.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loader, daemon=True) for _ in range(load)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    loaded = _latencies(mirror.host, small, count)
    stop.set()
    for t in threads:
        t.join(70)
    return {
        "alone_ms": [x * 1000 for x in alone],
        "loaded_ms": [x * 1000 for x in loaded],
        "big_ms": [x * 1000 for x in big_gets],
    }


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="also bench this commit's src/ (git archive)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load", type=int, default=4, help="clients looping the big manifest")
    parser.add_argument("--count", type=int, default=60, help="small-manifest GETs per phase")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pt-bigmanifest-"))
    try:
        upstream = DockerRegistry(work / "upstream", "upstream").start()
        seeded = seed(upstream)
        srcs: dict[str, Path | None] = {"pullthrough": None}
        if args.before:
            snap = work / "before"
            snap.mkdir()
            archive = subprocess.run(
                ["git", "archive", args.before, "src"], cwd=BENCH_DIR.parent,
                check=True, capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, check=True)
            srcs = {f"pullthrough@{args.before}": snap / "src", **srcs}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in [*srcs, "reference"]}
        for run in range(args.runs):
            names = list(results) if run % 2 == 0 else list(reversed(results))
            for name in names:
                where = work / f"run{run}-{name.replace('@', '-')}"
                mirror: Server
                if name == "reference":
                    mirror = DockerRegistry(where, name, remoteurl=upstream.url)
                else:
                    mirror = Pullthrough(where, name, remoteurl=upstream.url, src=srcs[name])
                mirror.start()
                try:
                    results[name].append(measure(mirror, seeded, args.load, args.count))
                finally:
                    mirror.stop()
        rows = []
        for name, runs in results.items():
            alone = statistics.median(statistics.median(r["alone_ms"]) for r in runs)
            loaded = statistics.median(statistics.median(r["loaded_ms"]) for r in runs)
            p90 = statistics.median(_p(r["loaded_ms"], 0.9) for r in runs)
            big = statistics.median(statistics.median(r["big_ms"]) for r in runs if r["big_ms"])
            rows.append((name, alone, loaded, p90, big, loaded / alone))
        print(
            f"\nsmall cached manifest GET while {args.load} clients loop a "
            f"{seeded['big_size'] / 1e6:.1f} MB manifest (medians of {args.runs} runs, ms)"
        )
        print(f"{'mirror':<28} {'alone':>8} {'loaded':>8} {'p90':>8} {'big GET':>8} {'x':>6}")
        for name, alone, loaded, p90, big, ratio in rows:
            print(f"{name:<28} {alone:8.2f} {loaded:8.2f} {p90:8.2f} {big:8.2f} {ratio:6.1f}")
        out = BENCH_DIR / "results"
        out.mkdir(exist_ok=True)
        path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-big-manifest.json"
        path.write_text(json.dumps({"seeded": seeded, "args": vars(args), "host": LOOPBACK,
                                    "results": results}, indent=1))
        print(f"wrote {path}")
    finally:
        stop_all()


if __name__ == "__main__":
    main()
