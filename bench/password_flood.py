#!/usr/bin/env python3
"""Another user's cached pulls while wrong passwords flood the mirror (``auth.htpasswd``).

    /work/main/.venv/bin/python bench/password_flood.py \\
        --src main=/work/main/src --src branch=src [--runs 3] [--gets 30] [--flood 100]

Loopback only. Starts an upstream ``docker-registry`` with one small seeded image, then for
each run and each ``--src`` (a directory holding the ``pullthrough`` package, put first on
PYTHONPATH; the order alternates between runs) a fresh ``pullthrough serve`` with an
htpasswd file of bcrypt entries (``--rounds``, default 10): alice, who is attacked, and bob,
who pulls. Bob pulls the image once (cached, his password verified), then three phases time
``--gets`` of bob's GETs of the cached blob and manifest (alternately, each on a fresh
connection):

- ``quiet``: nothing else runs;
- ``wrong-password flood``: ``--flood`` concurrent connections send GET /v2/ with wrong
  passwords for alice (a new guess each time) until the phase ends;
- ``no-credential flood``: the same number of connections sending no credentials (answered
  401 without any bcrypt), the cost of the request load alone.

The floods run in a child process (so they do not share the timing client's GIL) and are
bounded: they stop when the phase ends (SIGTERM, by PID), after ``--phase-seconds`` + 10 s,
or after 500 000 requests. Every GET has a 30 s time-out and each phase ``--phase-seconds``.
Prints the medians over runs of each run's median and writes
``bench/results/<timestamp>-password-flood.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import LOOPBACK, DockerRegistry, Server, clean_env, stop_all  # noqa: E402
from seed import ACCEPT, seed_image  # noqa: E402

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")
PHASES = ("quiet", "wrong-password flood", "no-credential flood")
GET_TIMEOUT = 30.0
MAX_FLOOD_REQUESTS = 500_000


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class AuthMirror(Server):
    """``pullthrough serve`` from ``src``, with ``auth.htpasswd``."""

    kind = "pullthrough"

    def __init__(self, workdir: Path, name: str, *, remoteurl: str, src: Path, htpasswd: Path):
        super().__init__(workdir, name)
        self.remoteurl = remoteurl
        self.src = src
        self.htpasswd = htpasswd

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pullthrough", "serve", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return clean_env({"PYTHONPATH": str(self.src)})

    def write_config(self) -> None:
        import yaml

        cfg = {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}},
            "http": {"addr": self.host},
            "proxy": {"remoteurl": self.remoteurl},
            "auth": {"htpasswd": {"realm": "bench", "path": str(self.htpasswd)}},
        }
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def timed_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, float, bytes]:
    """(status, seconds, body) of one GET on a fresh connection; status 0 on an error."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=GET_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, time.perf_counter() - t0, body
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - t0, b""
    finally:
        conn.close()


def bobs_gets(port: int, paths: list[str], count: int, deadline: float) -> dict[str, Any]:
    auth = {"Authorization": basic(*BOB), "Accept": ACCEPT}
    times: dict[str, list[float]] = {"blob": [], "manifest": []}
    failed = 0
    for i in range(count):
        if time.monotonic() > deadline:
            break
        kind = "blob" if i % 2 == 0 else "manifest"
        status, seconds, _ = timed_get(port, paths[i % 2], auth)
        if status == 200:
            times[kind].append(seconds)
        else:
            failed += 1
    every = times["blob"] + times["manifest"]
    return {
        "ok": len(every),
        "failed": failed,
        "median_ms": statistics.median(every) * 1000 if every else None,
        "blob_median_ms": statistics.median(times["blob"]) * 1000 if times["blob"] else None,
        "manifest_median_ms": (
            statistics.median(times["manifest"]) * 1000 if times["manifest"] else None
        ),
        "max_ms": max(every) * 1000 if every else None,
    }


# --------------------------------------------------------------------------- the flood (child)


async def flood(url: str, user: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` connections sending GET /v2/ (wrong passwords for ``user``, or no
    credentials when ``user`` is empty) until SIGTERM, ``seconds`` or MAX_FLOOD_REQUESTS."""
    import aiohttp

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    deadline = loop.time() + seconds
    counts: Counter[str] = Counter()
    sent = 0
    started = loop.time()

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal sent
        guess = 0
        while not stop.is_set() and loop.time() < deadline and sent < MAX_FLOOD_REQUESTS:
            sent += 1
            guess += 1
            headers = {"Authorization": basic(user, f"guess-{n}-{guess}")} if user else {}
            try:
                async with session.get(f"{url}/v2/", headers=headers) as resp:
                    await resp.read()
                    counts[str(resp.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                counts[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=GET_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(worker(session, n)) for n in range(concurrency)]
        # Workers end at the deadline or on SIGTERM, after the request they are in.
        _, pending = await asyncio.wait(tasks, timeout=seconds + GET_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = loop.time() - started
    return {"requests": sent, "seconds": elapsed, "statuses": dict(counts)}


class Flood:
    """The flood child process, stopped by its PID."""

    def __init__(self, url: str, user: str, concurrency: int, seconds: float, out: Path):
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--flood-child", url, user, str(concurrency)]
            + [str(seconds), str(out)],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(GET_TIMEOUT + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.out.read_text()))
        return {}


# --------------------------------------------------------------------------- the driver


def one_run(
    args: argparse.Namespace, label: str, src: Path, upstream: Server, image: Any, work: Path
) -> dict[str, Any]:
    mirror = AuthMirror(
        work / label,
        f"pullthrough-{label}",
        remoteurl=upstream.url,
        src=src,
        htpasswd=work / "htpasswd",
    )
    mirror.start()
    try:
        paths = [
            f"/v2/{image.repo}/blobs/{image.layer_digest}",
            f"/v2/{image.repo}/manifests/{image.digest}",
        ]
        auth = {"Authorization": basic(*BOB), "Accept": ACCEPT}
        for path in paths:  # bob's first pull: cached from now on, his password verified
            status, _, _ = timed_get(mirror.port, path, auth)
            if status != 200:
                raise RuntimeError(f"{label}: warm-up GET {path} answered {status}")
        result: dict[str, Any] = {}
        for phase in PHASES:
            flooder = None
            if phase != "quiet":
                user = ALICE[0] if phase == "wrong-password flood" else ""
                flooder = Flood(
                    mirror.url, user, args.flood, args.phase_seconds + 10, work / "flood.json"
                )
                time.sleep(2.0)  # connected and flooding
            deadline = time.monotonic() + args.phase_seconds
            t0 = time.monotonic()
            gets = bobs_gets(mirror.port, paths, args.gets, deadline)
            gets["seconds"] = time.monotonic() - t0
            if flooder is not None:
                stats = flooder.stop()
                gets["flood"] = stats
                if stats.get("seconds"):
                    gets["flood_rps"] = stats["requests"] / stats["seconds"]
            result[phase] = gets
            log(
                f"{label}: {phase}: median {gets['median_ms']:.1f} ms "
                f"({gets['ok']} ok, {gets['failed']} failed)"
                + (f", flood {gets.get('flood', {}).get('statuses')}" if flooder else "")
            )
        return result
    finally:
        mirror.stop()
        shutil.rmtree(mirror.workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gets", type=int, default=30)
    parser.add_argument("--flood", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10, help="bcrypt cost of the entries")
    parser.add_argument("--phase-seconds", type=float, default=150.0)
    parser.add_argument("--flood-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_child:
        url, user, concurrency, seconds, out = args.flood_child
        stats = asyncio.run(flood(url, user, int(concurrency), float(seconds)))
        Path(out).write_text(json.dumps(stats))
        return 0

    import bcrypt

    sources = [s.partition("=") for s in args.src] or [("tree", "=", str(BENCH.parent / "src"))]
    srcs = {label: Path(d).resolve() for label, _, d in sources}
    work = Path(tempfile.mkdtemp(prefix="pullthrough-password-flood-"))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in srcs}
    try:
        lines = [
            f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=args.rounds)).decode()}"
            for u, p in (ALICE, BOB)
        ]
        (work / "htpasswd").write_text("\n".join(lines) + "\n")
        upstream = DockerRegistry(work / "upstream", "upstream")
        upstream.start()
        auth_file = work / "auth.json"
        auth_file.write_text('{"auths": {}}')
        image = seed_image(work, upstream.host, "bench/flood", [256 * 1024], "flood", auth_file)
        log(f"upstream on {upstream.url} holds {image.repo}@{image.digest[:19]}")
        labels = list(srcs)
        for run in range(args.runs):
            for label in labels[run % len(labels) :] + labels[: run % len(labels)]:
                log(f"run {run + 1}/{args.runs}: {label} ({srcs[label]})")
                runs[label].append(one_run(args, label, srcs[label], upstream, image, work))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(runs)
    print_table(summary, args)
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-password-flood.json"
    settings = {k: v for k, v in vars(args).items() if k != "flood_child"}
    out.write_text(
        json.dumps(
            {
                "settings": settings,
                "sources": {k: str(v) for k, v in srcs.items()},
                "summary": summary,
                "runs": runs,
            },
            indent=1,
        )
    )
    log(f"wrote {out}")
    return 0


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per source and phase: the median over runs of each run's medians."""
    out: dict[str, Any] = {}
    for label, results in runs.items():
        out[label] = {}
        for phase in PHASES:
            rows = [r[phase] for r in results]
            out[label][phase] = {
                key: _median([row.get(key) for row in rows])
                for key in ("median_ms", "blob_median_ms", "manifest_median_ms", "max_ms")
            }
            out[label][phase]["failed"] = sum(row["failed"] for row in rows)
            out[label][phase]["flood_rps"] = _median([row.get("flood_rps") for row in rows])
            statuses: Counter[str] = Counter()
            for row in rows:
                statuses.update(row.get("flood", {}).get("statuses", {}))
            out[label][phase]["flood_statuses"] = dict(statuses)
    return out


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        f"\nbob's cached GETs (ms, median over {args.runs} runs of each run's median of "
        f"{args.gets}); flood: {args.flood} connections, bcrypt cost {args.rounds}\n"
    )
    head = f"{'source':<10} {'phase':<22} {'all':>8} {'blob':>8} {'manifest':>9} {'max':>8}"
    print(head + f" {'failed':>6} {'flood req/s':>11}  flood answers")
    for label, phases in summary.items():
        for phase, row in phases.items():
            print(
                f"{label:<10} {phase:<22} {ms(row['median_ms']):>8} {ms(row['blob_median_ms']):>8}"
                f" {ms(row['manifest_median_ms']):>9} {ms(row['max_ms']):>8} {row['failed']:>6}"
                f" {ms(row['flood_rps']):>11}  {row['flood_statuses'] or ''}"
            )
    print()


if __name__ == "__main__":
    sys.exit(main())
