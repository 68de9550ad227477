"""A bounded soak of ``pullthrough serve``: does anything leak, is any wrong byte served?

Loopback only. Starts a real upstream (Debian's ``docker-registry``, the test suite's
``Registry``) holding seeded images pushed with skopeo, the suite's fault proxy
(``RecordingProxy``) in front of it, and ``pullthrough serve`` on a store whose
``mirror.maxsize`` is about half the content (so eviction never stops), with a short TTL and
``gc_interval``. Then, for ``--minutes``: several clients pull (warm and cold, manifests by tag
and digest, whole blobs, ranges, HEADs, every byte checked), one sends hostile requests, and
the upstream's faults are switched on and off in turn (refused connections, 503, 429, HTML
200, stalls before the answer and mid-body, dropped and corrupted blobs, tampered manifests,
a slow upstream). Every ``--interval`` seconds a row is printed: answers by status, aborted
transfers, wrong bytes, the mirror's RSS, open fds, connections to the upstream and store
size against ``maxsize``.

Exits 1 if any wrong byte or manifest answer was served, a HEAD announced another size than
the blob's, any answer was a 500 (as the clients saw it or
as the mirror counted it), or RSS/fds grew past the bounds in ``soak_report`` between the
minute-2 sample (the first sample in runs shorter than 3 minutes) and the end. Writes the
samples to ``bench/results/<timestamp>-soak.json``.

    .venv/bin/python scripts/soak.py [--minutes 10] [--interval 60] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # tests.support: the registry, images, fault proxy, mirror

import aiohttp  # noqa: E402
import soak_proc  # noqa: E402
import soak_report  # noqa: E402
from soak_load import (  # noqa: E402
    REQUEST_TIMEOUT,
    Content,
    Puller,
    Tally,
    Target,
    blobs_of_manifest,
    hostile,
)

from tests.support.images import fetch_manifest, make_image, make_index, publish  # noqa: E402
from tests.support.mirror import MirrorProcess  # noqa: E402
from tests.support.net import LOOPBACK, free_port  # noqa: E402
from tests.support.proxy import RecordingProxy  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
IMAGES = 8
LAYER_SIZES = (32 * KiB, 96 * KiB, 256 * KiB, 512 * KiB, 768 * KiB, 1 * MiB, 1280 * KiB)
GRACE = 10.0  # seconds the clients get to finish in-flight requests after the end


# ---------------------------------------------------------------------------- setup


def seed_upstream(registry: Registry, layouts: Path, rng: random.Random) -> Content:
    """Push the soak's images and read back, from the upstream itself, every byte a client
    may be served: the truth the clients check against."""
    pushed = []
    first = make_image(layouts / "app-0", [256 * KiB, 1 * MiB], seed="soak-0", ref="v1")
    pushed.append(publish(first, registry.host, "soak/app-0", "v1"))
    # The same blobs under another repository and manifest (Docker schema2).
    pushed.append(publish(first, registry.host, "soak/app-0-docker", "v1", format="v2s2"))
    index = make_index(layouts / "multi", layer_size=192 * KiB, seed="soak-multi", ref="v1")
    pushed.append(publish(index, registry.host, "soak/multi", "v1"))
    for i in range(1, IMAGES):
        layers = [rng.choice(LAYER_SIZES) for _ in range(rng.randint(1, 3))]
        built = make_image(layouts / f"app-{i}", layers, seed=f"soak-{i}", ref="v1")
        pushed.append(publish(built, registry.host, f"soak/app-{i}", "v1"))

    manifests: dict[str, bytes] = {}
    blobs: dict[str, bytes] = {}
    targets = []
    for image in pushed:
        top = fetch_manifest(registry.host, image.repo, image.digest)
        manifests[top.digest] = top.raw
        blobs_of: dict[str, tuple[str, ...]] = {top.digest: blobs_of_manifest(top.raw)}
        for child in top.child_digests:
            raw = fetch_manifest(registry.host, image.repo, child).raw
            manifests[child] = raw
            blobs_of[child] = blobs_of_manifest(raw)
        for digest in {d for ds in blobs_of.values() for d in ds}:
            resp = registry.request("GET", f"/v2/{image.repo}/blobs/{digest}")
            assert resp.status == 200, (image.repo, digest, resp.status)
            blobs[digest] = resp.body
        targets.append(
            Target(image.repo, image.tag, top.digest, tuple(top.child_digests), blobs_of)
        )
    return Content(manifests, blobs, tuple(targets), hot=3)


def mirror_config(maxsize: int, debug_port: int) -> dict[str, Any]:
    return {
        "log": {"level": "info"},
        "http": {
            "debug": {
                "addr": f"{LOOPBACK}:{debug_port}",
                "prometheus": {"enabled": True, "path": "/metrics"},
            }
        },
        # A short TTL and sweep interval and a small store: gc and eviction run all the time.
        "proxy": {"ttl": "45s"},
        "mirror": {
            "maxsize": maxsize,
            "gc_interval": "2s",
            "upstream_connect_timeout": "2s",
            "upstream_read_timeout": "5s",
        },
    }


# ---------------------------------------------------------------------------- faults


def fault_switches(proxy: RecordingProxy) -> dict[str, Any]:
    """Each fault as a function that switches it on (``clear_faults`` switches it off)."""

    def fail(status: int, **extra: Any) -> Any:
        def on() -> None:
            proxy.fail_status = status
            for key, value in extra.items():
                setattr(proxy, key, value)

        return on

    def knob(**values: Any) -> Any:
        def on() -> None:
            for key, value in values.items():
                setattr(proxy, key, value)

        return on

    return {
        "refuse": None,  # the proxy stopped: connections refused
        "503": fail(503, fail_headers={"Retry-After": "1"}),
        "stall": knob(stall_seconds=3.0),
        "body-stall": knob(stall_body_after=64 * KiB, stall_body_seconds=7.0),
        "drop": knob(drop_after=96 * KiB),
        "corrupt": knob(corrupt_blobs=True),
        "429": fail(429, fail_headers={"Retry-After": "1"}),
        "tamper": knob(tamper_manifests=True),
        "html200": fail(200, fail_content_type="text/html", fail_body="<html>busy</html>"),
        "slow": knob(blob_rate=256 * KiB),
    }


async def switch_faults(
    proxy: RecordingProxy, phase: float, deadline: float, seen: list[str]
) -> None:
    """Alternate a quiet phase and the next fault, ``phase`` seconds each, until ``deadline``."""
    switches = fault_switches(proxy)
    names = list(switches)
    i = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(min(phase, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        name = names[i % len(names)]
        i += 1
        proxy.reset()  # the soak reads no records: keep the proxy's log from growing
        seen.append(name)
        on = switches[name]
        if on is None:
            await asyncio.to_thread(proxy.stop)
        else:
            on()
        try:
            await asyncio.sleep(min(phase, max(0.0, deadline - time.monotonic())))
        finally:
            proxy.clear_faults()
            if not proxy.running:
                await asyncio.to_thread(proxy.start)


# ---------------------------------------------------------------------------- readings


class Gauges:
    """The mirror's process and store, read every second; peaks kept until ``take``."""

    def __init__(self, pid: int, upstream_port: int, store: Path) -> None:
        self.pid, self.upstream_port, self.store = pid, upstream_port, store
        self.rss_peak = self.conns_peak = self.store_peak = 0

    def read(self) -> tuple[int, int, int, int]:
        rss = soak_proc.rss_bytes(self.pid)
        conns = soak_proc.connections_to(self.pid, self.upstream_port)
        size = soak_proc.tree_size(self.store)
        self.rss_peak = max(self.rss_peak, rss)
        self.conns_peak = max(self.conns_peak, conns)
        self.store_peak = max(self.store_peak, size)
        return rss, soak_proc.open_fds(self.pid), conns, size

    def take(self) -> tuple[int, int, int]:
        out = (self.rss_peak, self.conns_peak, self.store_peak)
        self.rss_peak = self.conns_peak = self.store_peak = 0
        return out


def scrape_statuses(metrics_url: str) -> dict[str, int]:
    """``pullthrough_requests_total`` summed by status, as the mirror counted it."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("pullthrough_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            out[status] += int(float(value))
    return dict(out)


async def sample_every(
    interval: float,
    total: float,
    started: float,
    gauges: Gauges,
    tally: Tally,
    faults: list[str],
    maxsize: int,
) -> list[soak_report.Sample]:
    """A row every ``interval`` seconds (and one at the end), printed as it is taken."""
    samples: list[soak_report.Sample] = []
    print(soak_report.header(), flush=True)
    next_row = min(interval, total)
    while True:
        await asyncio.sleep(min(1.0, max(0.0, started + next_row - time.monotonic())))
        rss, fds, conns, size = await asyncio.to_thread(gauges.read)
        if time.monotonic() - started < next_row:
            continue
        statuses, wrong, wrong_bytes, aborted = tally.take()
        rss_peak, conns_peak, store_peak = gauges.take()
        sample = soak_report.Sample(
            at=round(time.monotonic() - started, 1),
            statuses=statuses,
            wrong=wrong,
            wrong_bytes=wrong_bytes,
            aborted=aborted,
            rss=rss,
            rss_peak=rss_peak,
            fds=fds,
            upstream_conns=conns,
            upstream_conns_peak=conns_peak,
            store_bytes=size,
            store_peak=store_peak,
            maxsize=maxsize,
            phases=tuple(faults),
        )
        faults.clear()
        samples.append(sample)
        print(soak_report.row(sample), flush=True)
        if next_row >= total:
            return samples
        next_row = min(next_row + interval, total)


async def run_load(
    args: argparse.Namespace,
    content: Content,
    proxy: RecordingProxy,
    mirror: MirrorProcess,
    maxsize: int,
) -> tuple[list[soak_report.Sample], Tally, Counter[str]]:
    total = args.minutes * 60.0
    started = time.monotonic()
    deadline = started + total
    tally = Tally()
    hostile_seen: Counter[str] = Counter()
    faults: list[str] = []
    assert mirror.proc is not None
    gauges = Gauges(mirror.proc.pid, proxy.port, mirror.root / "blobs")
    phase = min(10.0, max(2.0, total / 20))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        timeout=REQUEST_TIMEOUT, connector=connector, auto_decompress=False
    ) as session:
        clients = [
            asyncio.create_task(
                Puller(session, mirror.url, content, tally, random.Random(f"{args.seed}/{n}")).run(
                    deadline
                )
            )
            for n in range(args.clients)
        ]
        clients.append(
            asyncio.create_task(
                hostile(
                    LOOPBACK,
                    mirror.port,
                    content,
                    tally,
                    random.Random(f"{args.seed}/hostile"),
                    deadline,
                    lambda name, status: hostile_seen.update([f"{name} -> {status}"]),
                )
            )
        )
        switcher = asyncio.create_task(switch_faults(proxy, phase, deadline, faults))
        samples = await sample_every(args.interval, total, started, gauges, tally, faults, maxsize)
        await switcher
        # In-flight requests may finish (they are counted in no row); then they are cut.
        _done, pending = await asyncio.wait(clients, timeout=GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    await asyncio.sleep(2.0)  # responses finish, pooled connections settle
    rss, fds, conns, size = await asyncio.to_thread(gauges.read)
    print(
        f"after the load: RSS {rss / MiB:.1f} MiB, {fds} fds, {conns} upstream connections, "
        f"store {size / MiB:.1f} MiB",
        flush=True,
    )
    return samples, tally, hostile_seen


def traceback_heads(log: str) -> list[str]:
    """The line before each traceback in the mirror's log (what failed, and where).

    Not part of the verdict (a traceback is not a wrong byte or a 500), but every one is
    worth a look: the soak found a descriptor closed twice this way."""
    lines = log.splitlines()
    return [
        lines[i - 1]
        for i, line in enumerate(lines)
        # A chained traceback ("During handling of the above exception") follows a blank line.
        if i > 0 and line.startswith("Traceback (most recent call last)") and lines[i - 1]
    ]


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length (fractions allowed)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between rows")
    parser.add_argument("--clients", type=int, default=4, help="pulling clients")
    parser.add_argument("--seed", default="soak", help="seeds the clients' choices")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="default bench/results/<time>-soak.json")
    args = parser.parse_args()
    # The fault proxy runs in this process; its server logs every connection the mirror
    # drops mid-answer (which the faults provoke on purpose).
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    if not 0 < args.minutes <= 24 * 60 or args.interval <= 0 or args.clients < 1:
        parser.error("--minutes must be in (0, 1440], --interval > 0, --clients >= 1")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pullthrough-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    registry = Registry(workdir / "upstream")
    proxy: RecordingProxy | None = None
    mirror: MirrorProcess | None = None
    try:
        began = time.monotonic()
        registry.start()
        content = seed_upstream(registry, workdir / "layouts", random.Random(args.seed))
        stored = sum(map(len, content.blobs.values())) + sum(map(len, content.manifests.values()))
        maxsize = stored // 2
        proxy = RecordingProxy(registry.url).start()
        debug_port = free_port()
        mirror = MirrorProcess(
            workdir / "mirror", proxy.url, config=mirror_config(maxsize, debug_port)
        ).start()
        print(
            f"soak: {args.minutes:g} min, {args.clients} clients + 1 hostile, "
            f"{len(content.targets)} images ({stored / MiB:.1f} MiB), maxsize "
            f"{maxsize / MiB:.1f} MiB; mirror pid {mirror.proc.pid if mirror.proc else '?'}, "
            f"log {mirror.log_path}; set-up {time.monotonic() - began:.0f}s",
            flush=True,
        )
        samples, tally, hostile_seen = asyncio.run(run_load(args, content, proxy, mirror, maxsize))
        server_statuses = scrape_statuses(f"http://{LOOPBACK}:{debug_port}/metrics")
        log = mirror.log_text()
    finally:
        if mirror is not None:
            mirror.stop()
        if proxy is not None:
            proxy.stop()
        registry.stop()

    result = soak_report.verdict(
        samples, server_500=server_statuses.get("500", 0), wrong_heads=tally.wrong_heads
    )
    tracebacks = traceback_heads(log)
    print("answers by status:", soak_report.status_line(soak_report.sum_samples(samples)))
    print("the mirror counted:", " ".join(f"{k}:{v}" for k, v in sorted(server_statuses.items())))
    print("hostile requests:", ", ".join(f"{k} x{v}" for k, v in sorted(hostile_seen.items())))
    print(
        f"HEADs answered with another size than the blob's: {tally.wrong_heads}"
    )
    print(f"tracebacks in the mirror's log: {len(tracebacks)}")
    for line in tracebacks[:10]:
        print("  !", line)
    for note in tally.notes:
        print("  !", note)
    if result.baseline_at is None:
        print("growth: not checked (fewer than two samples)")
    else:
        print(
            f"growth checked from t={result.baseline_at:.0f}s to the end "
            f"(bounds: RSS {soak_report.RSS_GROWTH_BOUND // MiB} MiB, "
            f"fds {soak_report.FD_GROWTH_BOUND})"
        )
    print("soak:", "PASS" if result.ok else "FAIL: " + "; ".join(result.reasons), flush=True)

    out = args.json or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "minutes": args.minutes,
                "clients": args.clients,
                "maxsize": maxsize,
                "samples": [s.as_dict() for s in samples],
                "server_statuses": server_statuses,
                "hostile": dict(hostile_seen),
                "notes": tally.notes,
                "wrong_heads": tally.wrong_heads,
                "tracebacks": tracebacks,
                "ok": result.ok,
                "reasons": list(result.reasons),
            },
            indent=1,
        )
    )
    print(f"results: {out}")
    if args.workdir is None and result.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not result.ok:
        print(f"kept for a look: {workdir} (the mirror's log is mirror/mirror.log)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
