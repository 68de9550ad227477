#!/usr/bin/env python3
"""Profile pullthrough with py-spy while it serves one bench scenario.

    /tmp/venv/bin/pip install py-spy      # once
    /tmp/venv/bin/python bench/profile.py warm [--blob-mib 1024] [--seconds 15] [--snapshot]

Scenarios: ``cold`` (cold GETs of the blob, each on a fresh store, for up to --seconds),
``c20`` (20 concurrent cold GETs), ``warm`` (warm GETs for --seconds), ``w20`` (20 concurrent
warm GETs), ``base`` / ``mdigest`` / ``mtag`` (wrk on GET /v2/, manifest by digest, by tag).
``--loop asyncio`` runs the server on the stdlib loop instead of uvloop.

Writes ``bench/results/profile-<scenario>-<loop>-<time>.{raw,txt}``: py-spy's collapsed
stacks (for any flame-graph tool) and a text summary: top functions by own and by inclusive
samples, and samples per thread. Same workdir and seeded upstream as ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import wrk  # noqa: E402
from procs import http_status  # noqa: E402
from run import CONCURRENCY, CONNECTIONS, MODES, PT, Bench, MiB  # noqa: E402
from seed import ACCEPT  # noqa: E402

PY_SPY = str(Path(sys.executable).parent / "py-spy")
# Frames py-spy does not recognise as idle: an executor thread waiting for work.
IDLE = {"_worker (concurrent/futures/thread.py:81)"}


def summarize(raw: Path, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1] in IDLE:
            continue
        total += n
        threads[re.sub(r"_\d+$", "_N", frames[0].partition(": ")[2] or frames[0])] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    out = [f"{total} samples (non-idle)", "", "by thread:"]
    out += [f"  {100 * n / total:5.1f}%  {t}" for t, n in threads.most_common()]
    out += ["", "own time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=["cold", "c20", "warm", "w20", "base", "mdigest", "mtag"])
    p.add_argument("--blob-mib", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--snapshot", action="store_true")
    p.add_argument("--pullthrough-src")
    p.add_argument("--workdir", default="/tmp/pullthrough-bench")
    a = p.parse_args()
    if not Path(PY_SPY).exists():
        p.error(f"{PY_SPY} missing: {sys.executable} -m pip install py-spy")
    args = argparse.Namespace(
        workdir=a.workdir,
        snapshot=a.snapshot,
        pullthrough_src=a.pullthrough_src,
        wrk_threads=2,
        only=None,
        clean=False,
    )
    mode = dict(MODES["full"], blob=a.blob_mib * MiB)
    bench = Bench(args, mode)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = BENCH / "results" / f"profile-{a.scenario}-{a.loop}-{stamp}"
    out.parent.mkdir(exist_ok=True)
    try:
        bench.setup()
        big, small = bench.images["big"], bench.images["small"]
        blob_url = bench.blob_path(big)
        root = bench.runs_dir / "profile-store"
        warm = a.scenario in ("warm", "w20", "base", "mdigest", "mtag")
        m = bench.mirror(PT, loop=a.loop, root=root)
        if warm:
            bench.client(m.url + blob_url)
            bench.settle(m, PT, big.layer_digest)
            for ref in (small.tag, small.digest):
                http_status(
                    f"{m.url}/v2/{small.repo}/manifests/{ref}", 10, headers={"Accept": ACCEPT}
                )
        spy_cmd = [
            PY_SPY,
            "record",
            "-p",
            str(m.pid),
            "-r",
            str(a.rate),
            "-f",
            "raw",
            "--threads",
            "-o",
            f"{out}.raw",
            "-d",
            str(int(a.seconds) + 600),
        ]
        if a.native:
            spy_cmd.append("--native")
        spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        deadline = time.monotonic() + a.seconds
        done = 0
        try:
            if a.scenario in ("base", "mdigest", "mtag"):
                path = {
                    "base": "/v2/",
                    "mdigest": f"/v2/{small.repo}/manifests/{small.digest}",
                    "mtag": f"/v2/{small.repo}/manifests/{small.tag}",
                }[a.scenario]
                res = wrk(
                    m.url + path,
                    connections=CONNECTIONS,
                    seconds=a.seconds,
                    threads=2,
                    headers=[f"Accept: {ACCEPT}"],
                )
                print(f"{res['rps']:.0f} req/s")
            else:
                conc = CONCURRENCY if a.scenario in ("c20", "w20") else 1
                passes = 1 if a.scenario in ("cold", "c20") else 50  # a second cold pass is warm
                while done < passes and (done == 0 or time.monotonic() < deadline):
                    res = bench.client(m.url + blob_url, conc)
                    done += 1
                    print(
                        f"pass {done}: {res['wall']:.2f}s "
                        f"{conc * mode['blob'] / MiB / res['wall']:.0f} MiB/s"
                    )
        finally:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            _, err = spy.communicate(timeout=60)
        if spy.returncode not in (0, None) and not Path(f"{out}.raw").exists():
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
        bench.retire(m)
        text = summarize(Path(f"{out}.raw"))
        Path(f"{out}.txt").write_text(text + "\n")
        print(text)
        print(f"\nwrote {out}.txt and {out}.raw (collapsed stacks)")
    finally:
        bench.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
