#!/usr/bin/env python3
"""pullthrough vs the reference mirror (docker-registry in proxy mode), on loopback only.

    /tmp/venv/bin/python bench/run.py [--quick] [--snapshot] [--tls-upstream] [--workdir DIR]

Starts an upstream docker-registry, two counting TCP proxies in front of it (one per mirror),
the reference mirror and pullthrough; seeds deterministic images; measures both mirrors back
to back (runs alternate which mirror goes first); prints a table and writes
bench/results/<timestamp>.json. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from certs import TlsFiles, make_tls  # noqa: E402
from countproxy import CountingProxy  # noqa: E402
from loadgen import ab_head, wrk  # noqa: E402
from procs import (  # noqa: E402
    DockerRegistry,
    Pullthrough,
    Server,
    TreeMonitor,
    clean_env,
    http_status,
    s3_mirror_extra,
    stop_all,
    tree_cpu,
)
from seed import ACCEPT, SKOPEO, Seeded, as_dict, seed_image, seed_index, skopeo  # noqa: E402

sys.path.insert(0, str(BENCH.parent))
from tests.cluster.redis_server import RedisServer  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
REF, PT = "reference", "pullthrough"
SIDES = (REF, PT)
# pullthrough serving cached blobs without re-hashing them (mirror.verify_on_read: false)
PT_NV = "pullthrough verify_on_read=false"
NO_VERIFY = {"verify_on_read": False}
# S3 section: pullthrough streaming blobs from its bucket (storage.redirect.disable: true)
PT_STREAM = "pullthrough redirect.disable=true"
S3_SIDES = (REF, PT, PT_STREAM)
S3_SLUG = {REF: "ref", PT: "pt", PT_STREAM: "pt-stream"}
S3_ROOT = "/bench"  # rootdirectory of both mirrors in their buckets
SEED_VERSION = 1

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "blob": 64 * MiB,
        "runs": 2,
        "conc_runs": 2,
        "skopeo_runs": 2,
        "loop_runs": 2,
        "wrk_seconds": 3.0,
        "wrk_runs": 2,
        "huge": 0,
        "cluster_gets": 9,
    },
    "full": {
        "blob": 1 * GiB,
        "runs": 5,
        "conc_runs": 3,
        "skopeo_runs": 3,
        "loop_runs": 4,
        "wrk_seconds": 10.0,
        "wrk_runs": 3,
        "huge": 4 * GiB,
        "cluster_gets": 30,
    },
}
CONCURRENCY = 20
CONNECTIONS = 32
REPLICAS = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def order(run: int) -> tuple[str, str]:
    """Alternate which mirror goes first, so drift on a noisy machine hits both alike."""
    return SIDES if run % 2 == 0 else SIDES[::-1]


def rotate(items: list[str], run: int) -> list[str]:
    k = run % len(items)
    return items[k:] + items[:k]


class Proxies(dict[str, CountingProxy]):
    """The counting proxy of a mirror; every pullthrough variant uses pullthrough's."""

    def __missing__(self, side: str) -> CountingProxy:
        if side.startswith(PT):
            return self[PT]
        raise KeyError(side)


# --------------------------------------------------------------------------- results


class Results:
    def __init__(self) -> None:
        # Upstream over TLS: the counting proxies see bytes (records included), no requests.
        self.tls = False
        self.metrics: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.raw: dict[str, list[Any]] = {}
        # A cell that has words instead of a number (e.g. "not supported yet")
        self.text: dict[str, dict[str, str]] = {}

    def define(self, key: str, label: str, unit: str, better: str) -> None:
        self.metrics.setdefault(key, {"label": label, "unit": unit, "better": better, "values": {}})

    def add(self, key: str, side: str, value: float | None) -> None:
        if value is not None:
            self.metrics[key]["values"].setdefault(side, []).append(value)

    def mark(self, key: str, side: str, text: str) -> None:
        self.text.setdefault(key, {})[side] = text

    def keep(self, section: str, record: Any) -> None:
        self.raw.setdefault(section, []).append(record)

    def median(self, key: str, side: str) -> float | None:
        vals = self.metrics.get(key, {}).get("values", {}).get(side)
        return statistics.median(vals) if vals else None

    def summary(self) -> dict[str, Any]:
        out = {}
        for key, m in self.metrics.items():
            sides = {}
            for side, vals in m["values"].items():
                med = statistics.median(vals)
                sides[side] = {
                    "median": med,
                    "min": min(vals),
                    "max": max(vals),
                    "runs": vals,
                    "spread_pct": round(100 * (max(vals) - min(vals)) / med, 1) if med else None,
                }
            ratio = None
            if sides.get(REF) and sides.get(PT) and sides[REF]["median"]:
                ratio = sides[PT]["median"] / sides[REF]["median"]
            out[key] = {
                **{k: m[k] for k in ("label", "unit", "better")},
                "sides": sides,
                "pt_over_ref": ratio,
                **({"text": self.text[key]} if key in self.text else {}),
            }
        return out


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, mode: dict[str, Any]) -> None:
        self.args = args
        self.mode = mode
        self.size: int = mode["blob"]
        self.work = Path(args.workdir)
        self.runs_dir = self.work / "runs"
        self.results = Results()
        self.counter = 0
        self.src: Path | None = None
        self.images: dict[str, Seeded] = {}
        self.auth_file = self.work / "skopeo-auth.json"
        self.loadavg_start = os.getloadavg()
        self.tls: TlsFiles | None = None
        self.results.tls = bool(getattr(args, "tls_upstream", False))

    # ----------------------------------------------------------------- setup

    def setup(self) -> None:
        self.git = self.meta_git()
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.runs_dir, ignore_errors=True)
        self.runs_dir.mkdir()
        self.auth_file.write_text('{"auths": {}}')
        if self.args.snapshot:
            self.src = self._snapshot()
        elif self.args.pullthrough_src:
            self.src = Path(self.args.pullthrough_src).resolve()
        if self.results.tls:
            # A fresh CA and a certificate for IP:127.0.0.1: valid through the counting
            # proxies too, which pass the TLS stream through unchanged.
            self.tls = make_tls(self.work / "tls")
            self.results.notes.append(
                "upstream: TLS. The counting proxies see only encrypted bytes: upstream "
                "requests (blob GETs, upstream requests per request) are not counted, and "
                "upstream bytes include TLS records and handshakes"
            )
        tls = (self.tls.cert, self.tls.key) if self.tls else None
        self.upstream = DockerRegistry(self.work / "upstream", "upstream", tls=tls)
        self.upstream.start()
        log(f"upstream docker-registry on {self.upstream.url} (pid {self.upstream.pid})")
        self.proxies = Proxies(
            {
                REF: CountingProxy(
                    self.upstream.port, str(self.work / "proxy-reference.log"), tls=bool(tls)
                ).start(),
                PT: CountingProxy(
                    self.upstream.port, str(self.work / "proxy-pullthrough.log"), tls=bool(tls)
                ).start(),
            }
        )
        self.direct_proxy = self.proxies[PT]  # for the via-proxy baseline (nothing else runs)
        self.seed()

    def _snapshot(self) -> Path:
        """``git archive HEAD`` of the repository: a fixed version while the tree changes."""
        repo = BENCH.parent
        dest = self.work / "snapshot"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "HEAD", "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        log(f"benchmarking a snapshot of HEAD ({self.git['commit'][:12]}) in {dest}/src")
        return dest / "src"

    def seed(self) -> None:
        marker = self.upstream.workdir / "seeded.json"
        wanted = {"version": SEED_VERSION, "blob": self.size}
        images: dict[str, Any] = {}
        if marker.exists():
            saved = json.loads(marker.read_text())
            images = saved.get("images", {})
        host = self.upstream.host
        certs = self.tls.cert_dir if self.tls else None
        t0 = time.perf_counter()
        plan: list[tuple[str, Callable[[], Seeded]]] = [
            (
                "big",
                lambda: seed_image(
                    self.work,
                    host,
                    f"bench/big-{self.size}",
                    [self.size],
                    f"big-{self.size}",
                    self.auth_file,
                    certs,
                ),
            ),
            (
                "small",
                lambda: seed_image(
                    self.work,
                    host,
                    "bench/small",
                    [256 * 1024, 64 * 1024],
                    "small",
                    self.auth_file,
                    certs,
                ),
            ),
            (
                "multi",
                lambda: seed_index(
                    self.work, host, "bench/multi", 128 * 1024, "multi", self.auth_file, certs
                ),
            ),
        ]
        for name, make in plan:
            key = f"{name}@{self.size}" if name == "big" else name
            rec = images.get(key)
            if rec and rec.get("version") == SEED_VERSION and self._upstream_has(rec):
                self.images[name] = Seeded(**rec["image"])
                continue
            log(f"seeding {name} image into the upstream ...")
            self.images[name] = make()
            images[key] = {"version": SEED_VERSION, "image": as_dict(self.images[name])}
            marker.write_text(json.dumps({**wanted, "images": images}, indent=1))
        log(
            f"images ready in {time.perf_counter() - t0:.1f}s: "
            + ", ".join(f"{k}={v.repo}@{v.digest[:19]}" for k, v in self.images.items())
        )
        self._seed_marker = marker
        self._seed_images = images

    def seed_huge(self) -> Seeded:
        size = self.mode["huge"]
        key = f"huge@{size}"
        rec = self._seed_images.get(key)
        if rec and self._upstream_has(rec):
            return Seeded(**rec["image"])
        log(f"seeding a {size / GiB:.0f} GiB image into the upstream ...")
        img = seed_image(
            self.work,
            self.upstream.host,
            f"bench/huge-{size}",
            [size],
            f"huge-{size}",
            self.auth_file,
            self.tls.cert_dir if self.tls else None,
        )
        self._seed_images[key] = {"version": SEED_VERSION, "image": as_dict(img)}
        self._seed_marker.write_text(
            json.dumps({"version": SEED_VERSION, "images": self._seed_images}, indent=1)
        )
        return img

    def _upstream_has(self, rec: dict[str, Any]) -> bool:
        img = rec["image"]
        url = f"{self.upstream.url}/v2/{img['repo']}/manifests/{img['digest']}"
        if http_status(url, timeout=5, method="HEAD", headers={"Accept": ACCEPT}) != 200:
            return False
        return (
            not img.get("layer_digest")
            or http_status(
                f"{self.upstream.url}/v2/{img['repo']}/blobs/{img['layer_digest']}",
                timeout=5,
                method="HEAD",
            )
            == 200
        )

    # ----------------------------------------------------------------- mirrors

    def mirror_env(self) -> dict[str, str]:
        """Both mirrors trust the bench CA (and only it) when the upstream serves TLS."""
        return {"SSL_CERT_FILE": str(self.tls.ca)} if self.tls else {}

    def mirror(
        self,
        side: str,
        *,
        loop: str = "uvloop",
        tag_freshness: str = "0s",
        root: Path | None = None,
        mirror_extra: dict[str, Any] | None = None,
    ) -> Server:
        self.counter += 1
        name = side.split()[0]
        workdir = self.runs_dir / f"{self.counter:03d}-{name}"
        remote = self.proxies[side].url
        server: Server
        if side == REF:
            server = DockerRegistry(workdir, name, remoteurl=remote, extra_env=self.mirror_env())
        else:
            if side == PT_NV:
                mirror_extra = {**NO_VERIFY, **(mirror_extra or {})}
            server = Pullthrough(
                workdir,
                name,
                remoteurl=remote,
                loop=loop,
                tag_freshness=tag_freshness,
                src=self.src,
                root=root,
                mirror_extra=mirror_extra,
                extra_env=self.mirror_env(),
            )
        return server.start()

    def retire(self, server: Server, keep_data: bool = False) -> None:
        server.stop()
        if not keep_data:
            shutil.rmtree(server.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def fresh(self, side: str, **kw: Any) -> Iterator[Server]:
        server = self.mirror(side, **kw)
        try:
            yield server
        finally:
            self.retire(server)

    def settle(self, server: Server, side: str, digest: str, timeout: float = 300) -> dict:
        """Wait until the mirror stored the blob and its upstream traffic stopped."""
        proxy = self.proxies[side]
        quiet = 0.6 if side == REF else 0.2
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.has_blob(digest):  # type: ignore[attr-defined]
                break
            time.sleep(0.1)
        else:
            self.results.notes.append(f"{side}: blob not stored {timeout}s after a cold GET")
        return proxy.wait_idle(quiet, max(1.0, deadline - time.monotonic()))

    # ----------------------------------------------------------------- clients

    def blob_path(self, img: Seeded) -> str:
        return f"/v2/{img.repo}/blobs/{img.layer_digest}"

    def client(
        self,
        url: str | list[str],
        concurrency: int = 1,
        sha256: bool = False,
        follow: bool = False,
    ) -> dict[str, Any]:
        urls = [url] if isinstance(url, str) else url
        cmd = [sys.executable, str(BENCH / "client.py"), *urls, "--concurrency", str(concurrency)]
        if sha256:
            cmd.append("--sha256")
        if follow:  # a 307 to a presigned URL on the bucket, timed within the stream
            cmd.append("--follow-redirects")
        if self.tls:
            cmd += ["--cafile", str(self.tls.ca)]  # for the upstream's https:// URLs
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=clean_env())
        if proc.returncode != 0:
            raise RuntimeError(f"client failed: {proc.stderr[-2000:]}")
        res: dict[str, Any] = json.loads(proc.stdout)
        if not res["ok"]:
            bad = [s for s in res["streams"] if not s.get("ok")][:3]
            raise RuntimeError(f"GET {url} failed: {bad}")
        return res

    def skopeo_pull(self, host: str, img: Seeded, upstream: bool = False) -> float:
        """Pull from a mirror (plain HTTP) or, ``upstream=True``, from the upstream (over
        TLS verified against the bench CA with ``--tls-upstream``)."""
        dest = Path(tempfile.mkdtemp(prefix="skopeo-pull-", dir=self.runs_dir))
        tls = "--src-tls-verify=false"
        if upstream and self.tls:
            tls = f"--src-cert-dir={self.tls.cert_dir}"
        try:
            t0 = time.perf_counter()
            skopeo(
                [
                    "copy",
                    "--retry-times=0",
                    tls,
                    f"docker://{host}/{img.repo}:{img.tag}",
                    f"dir:{dest}",
                ],
                self.auth_file,
            )
            return time.perf_counter() - t0
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    # ----------------------------------------------------------------- sections

    def run_sections(self) -> None:
        sections: list[tuple[str, Callable[[], None]]] = [
            ("baseline", self.sec_baseline),
            ("cold", self.sec_cold),
            ("concurrent_cold", self.sec_concurrent_cold),
            ("skopeo", self.sec_skopeo),
            ("warm", self.sec_warm_and_rates),
            ("loops", self.sec_loops),
            ("huge", self.sec_huge),
            ("cluster", self.sec_cluster),
            ("s3", self.sec_s3),
        ]
        only = set(self.args.only.split(",")) if self.args.only else None
        for name, fn in sections:
            if only and name not in only:
                continue
            log(f"== {name}")
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # keep going: a partial result is still a result
                self.results.errors.append(f"{name}: {exc!r}")
                log(f"section {name} failed: {exc!r}\n{traceback.format_exc()}")
            self.results.keep("section_seconds", {name: round(time.perf_counter() - t0, 1)})
            self.results.keep("loadavg_after_section", {name: os.getloadavg()})

    def sec_baseline(self) -> None:
        r = self.results
        r.define("direct_wall", "upstream GET, direct", "s", "lower")
        r.define("direct_ttfb", "upstream GET TTFB, direct", "ms", "lower")
        r.define("via_proxy_wall", "upstream GET via counting proxy", "s", "lower")
        big = self.images["big"]
        path = self.blob_path(big)
        self.client(self.upstream.url + path)  # page cache of the upstream's file
        for run in range(self.mode["runs"]):
            for kind in ("direct", "via_proxy") if run % 2 == 0 else ("via_proxy", "direct"):
                base = self.upstream.url if kind == "direct" else self.direct_proxy.url
                res = self.client(base + path)
                r.add(f"{kind}_wall", "upstream", res["wall"])
                if kind == "direct":
                    r.add("direct_ttfb", "upstream", 1000 * res["streams"][0]["ttfb"])
                r.keep("baseline", {"kind": kind, "wall": res["wall"]})
        self.direct_proxy.wait_idle(0.2, 10)

    def sec_cold(self) -> None:
        r = self.results
        r.define("cold_wall", "cold GET wall", "s", "lower")
        r.define("cold_vs_direct", "cold GET / direct upstream GET", "x", "lower")
        r.define("cold_vs_proxy", "cold GET / upstream GET via proxy", "x", "lower")
        r.define("cold_bytes", "cold GET upstream bytes / blob", "x", "lower")
        r.define("cold_blob_gets", "cold GET upstream blob GETs", "n", "lower")
        r.define("cold_ttfb", "cold GET TTFB (status line)", "ms", "lower")
        r.define("cold_first_body", "cold GET first body byte", "ms", "lower")
        r.define("cold_cpu", "cold GET server CPU (until settled)", "s", "lower")
        big = self.images["big"]
        direct = r.median("direct_wall", "upstream")
        via = r.median("via_proxy_wall", "upstream")
        for run in range(self.mode["runs"]):
            for side in order(run):
                with self.fresh(side) as m:
                    proxy = self.proxies[side]
                    proxy.reset()
                    cpu0 = tree_cpu(m.pid)
                    res = self.client(m.url + self.blob_path(big))
                    stats = self.settle(m, side, big.layer_digest)
                    cpu = tree_cpu(m.pid) - cpu0
                s = res["streams"][0]
                r.add("cold_wall", side, res["wall"])
                if direct:
                    r.add("cold_vs_direct", side, res["wall"] / direct)
                if via:
                    r.add("cold_vs_proxy", side, res["wall"] / via)
                r.add("cold_bytes", side, stats["down_bytes"] / self.size)
                if not r.tls:
                    r.add("cold_blob_gets", side, stats["blob_gets"])
                r.add("cold_ttfb", side, 1000 * s["ttfb"])
                r.add("cold_first_body", side, 1000 * s.get("first_body", s["ttfb"]))
                r.add("cold_cpu", side, cpu)
                r.keep(
                    "cold",
                    {
                        "side": side,
                        "run": run,
                        "wall": res["wall"],
                        "cpu": cpu,
                        "upstream": {k: stats[k] for k in ("down_bytes", "up_bytes", "requests")},
                    },
                )
                log(
                    f"cold {side} run {run}: {res['wall']:.2f}s ttfb {1000 * s['ttfb']:.1f}ms "
                    f"upstream x{stats['down_bytes'] / self.size:.4f} cpu {cpu:.2f}s"
                )

    def _concurrent(
        self, server: Server, side: str, img: Seeded, size: int, cold: bool
    ) -> dict[str, Any]:
        proxy = self.proxies[side]
        proxy.reset()
        with TreeMonitor(server.pid) as mon:
            res = self.client(server.url + self.blob_path(img), CONCURRENCY)
            stats = self.settle(server, side, img.layer_digest) if cold else proxy.stats()
        out = {
            "wall": res["wall"],
            **mon.result(),
            "upstream_ratio": stats["down_bytes"] / size,
            "blob_gets": stats["blob_gets"],
            "ttfb_ms_max": 1000 * max(s["ttfb"] for s in res["streams"]),
            "stream_walls": sorted(round(s["end"], 3) for s in res["streams"]),
        }
        return out

    def sec_concurrent_cold(self) -> None:
        r = self.results
        r.define("c20_wall", f"{CONCURRENCY}x cold GET wall", "s", "lower")
        r.define("c20_bytes", f"{CONCURRENCY}x cold upstream bytes / blob", "x", "lower")
        r.define("c20_cpu", f"{CONCURRENCY}x cold server CPU", "s", "lower")
        r.define("c20_rss", f"{CONCURRENCY}x cold peak RSS (tree)", "MiB", "lower")
        big = self.images["big"]
        for run in range(self.mode["conc_runs"]):
            for side in order(run):
                with self.fresh(side) as m:
                    out = self._concurrent(m, side, big, self.size, cold=True)
                r.add("c20_wall", side, out["wall"])
                r.add("c20_bytes", side, out["upstream_ratio"])
                r.add("c20_cpu", side, out["cpu_s"])
                r.add("c20_rss", side, max(out["peak_rss_mib"], out["hwm_mib"] or 0))
                r.keep("concurrent_cold", {"side": side, "run": run, **out})
                log(
                    f"{CONCURRENCY}x cold {side} run {run}: {out['wall']:.2f}s upstream "
                    f"x{out['upstream_ratio']:.3f} cpu {out['cpu_s']:.2f}s "
                    f"rss {out['peak_rss_mib']} MiB (hwm {out['hwm_mib']})"
                )

    def sec_skopeo(self) -> None:
        r = self.results
        r.define("skopeo_direct", "skopeo pull (dir:), direct", "s", "lower")
        r.define("skopeo_wall", "skopeo pull (dir:) cold", "s", "lower")
        r.define("skopeo_vs_direct", "skopeo cold / direct", "x", "lower")
        r.define("skopeo_multi", "skopeo pull --all 2-platform index cold", "s", "lower")
        big = self.images["big"]
        direct_runs: list[float] = []
        for run in range(self.mode["skopeo_runs"]):
            kinds = ["direct", *order(run)]
            for kind in kinds[run % 3 :] + kinds[: run % 3]:
                if kind == "direct":
                    t = self.skopeo_pull(self.upstream.host, big, upstream=True)
                    direct_runs.append(t)
                    r.add("skopeo_direct", "upstream", t)
                    log(f"skopeo direct run {run}: {t:.2f}s")
                    continue
                with self.fresh(kind) as m:
                    self.proxies[kind].reset()
                    t = self.skopeo_pull(m.host, big)
                    self.settle(m, kind, big.layer_digest)
                r.add("skopeo_wall", kind, t)
                r.keep("skopeo", {"side": kind, "run": run, "wall": t})
                log(f"skopeo {kind} run {run}: {t:.2f}s")
        direct = statistics.median(direct_runs)
        for side in SIDES:
            for t in r.metrics["skopeo_wall"]["values"].get(side, []):
                r.add("skopeo_vs_direct", side, t / direct)
        multi = self.images["multi"]
        for side in SIDES:  # a functional check with a number attached: index + 2 platforms
            with self.fresh(side) as m:
                dest = Path(tempfile.mkdtemp(prefix="skopeo-multi-", dir=self.runs_dir))
                t0 = time.perf_counter()
                skopeo(
                    [
                        "copy",
                        "--all",
                        "--retry-times=0",
                        "--src-tls-verify=false",
                        f"docker://{m.host}/{multi.repo}:{multi.tag}",
                        f"dir:{dest}",
                    ],
                    self.auth_file,
                )
                r.add("skopeo_multi", side, time.perf_counter() - t0)
                shutil.rmtree(dest, ignore_errors=True)
                self.proxies[side].wait_idle(0.5 if side == REF else 0.2, 30)

    def sec_warm_and_rates(self) -> None:
        big, small = self.images["big"], self.images["small"]
        mirrors = {side: self.mirror(side) for side in (*SIDES, PT_NV)}
        try:
            for side, m in mirrors.items():  # prime: blob, manifests by tag and digest
                self.client(m.url + self.blob_path(big))
                self.settle(m, side, big.layer_digest)
                for ref in (small.tag, small.digest) if side != PT_NV else ():
                    status = http_status(
                        f"{m.url}/v2/{small.repo}/manifests/{ref}", 10, headers={"Accept": ACCEPT}
                    )
                    if status != 200:
                        raise RuntimeError(f"{side}: priming manifest {ref} -> {status}")
            self._warm(mirrors, big)
            self._warm_concurrent(mirrors, big)
            self._integrity(mirrors, big)
            self._rates(mirrors, small)
        finally:
            for m in mirrors.values():
                self.retire(m)

    def _warm(self, mirrors: dict[str, Server], big: Seeded) -> None:
        r = self.results
        r.define("warm_tput", "warm GET throughput", "MiB/s", "higher")
        r.define("warm_cpu", "warm GET server CPU per GiB", "s/GiB", "lower")
        r.define("warm_ttfb", "warm GET TTFB", "ms", "lower")
        r.define("warm_upstream", "warm GET upstream bytes", "B", "lower")
        for run in range(self.mode["runs"]):
            for side in rotate(list(mirrors), run):
                m = mirrors[side]
                self.proxies[side].reset()
                cpu0 = tree_cpu(m.pid)
                res = self.client(m.url + self.blob_path(big))
                cpu = tree_cpu(m.pid) - cpu0
                r.add("warm_tput", side, self.size / MiB / res["wall"])
                r.add("warm_cpu", side, cpu / (self.size / GiB))
                r.add("warm_ttfb", side, 1000 * res["streams"][0]["ttfb"])
                r.add("warm_upstream", side, self.proxies[side].stats()["down_bytes"])
                log(
                    f"warm {side} run {run}: {self.size / MiB / res['wall']:.0f} MiB/s, "
                    f"cpu {cpu / (self.size / GiB):.2f} s/GiB"
                )

    def _warm_concurrent(self, mirrors: dict[str, Server], big: Seeded) -> None:
        r = self.results
        r.define("w20_wall", f"{CONCURRENCY}x warm GET wall", "s", "lower")
        r.define("w20_cpu", f"{CONCURRENCY}x warm server CPU per GiB", "s/GiB", "lower")
        r.define("w20_rss", f"{CONCURRENCY}x warm peak RSS (tree)", "MiB", "lower")
        for run in range(self.mode["conc_runs"]):
            for side in rotate(list(mirrors), run):
                out = self._concurrent(mirrors[side], side, big, self.size, cold=False)
                r.add("w20_wall", side, out["wall"])
                r.add("w20_cpu", side, out["cpu_s"] / (CONCURRENCY * self.size / GiB))
                r.add("w20_rss", side, max(out["peak_rss_mib"], out["hwm_mib"] or 0))
                r.keep("concurrent_warm", {"side": side, "run": run, **out})
                log(
                    f"{CONCURRENCY}x warm {side} run {run}: {out['wall']:.2f}s "
                    f"cpu {out['cpu_s']:.2f}s rss {out['peak_rss_mib']} MiB"
                )

    def _integrity(self, mirrors: dict[str, Server], big: Seeded) -> None:
        for side, m in mirrors.items():
            res = self.client(m.url + self.blob_path(big), sha256=True)
            got = "sha256:" + res["streams"][0]["sha256"]
            ok = got == big.layer_digest
            self.results.keep("integrity", {"side": side, "ok": ok})
            if not ok:
                self.results.errors.append(f"{side} served the wrong bytes: {got}")

    def _rates(self, mirrors: dict[str, Server], small: Seeded) -> None:
        r = self.results
        secs, conns = self.mode["wrk_seconds"], CONNECTIONS
        threads = self.args.wrk_threads
        accept = [f"Accept: {ACCEPT}"]

        def get(url: str) -> dict[str, Any]:
            return wrk(url, connections=conns, seconds=secs, threads=threads, headers=accept)

        def head(url: str) -> dict[str, Any]:
            return ab_head(url, connections=conns, seconds=secs, headers=accept)

        by_digest = f"/v2/{small.repo}/manifests/{small.digest}"
        by_tag = f"/v2/{small.repo}/manifests/{small.tag}"
        benches: list[tuple[str, str, str, Callable[[str], dict[str, Any]]]] = [
            ("rps_base", "GET /v2/", "/v2/", get),
            ("rps_mdigest_get", "manifest by digest GET", by_digest, get),
            ("rps_mdigest_head", "manifest by digest HEAD (ab -k -i)", by_digest, head),
            ("rps_mtag_get", "manifest by tag GET", by_tag, get),
        ]
        fresh = self.mirror(PT, tag_freshness="60s")
        try:
            status = http_status(
                f"{fresh.url}/v2/{small.repo}/manifests/{small.tag}", 10, headers={"Accept": ACCEPT}
            )
            if status != 200:
                raise RuntimeError(f"priming tag on the tag_freshness mirror -> {status}")
            for key, label, path, fn in benches:
                r.define(key, f"{label} req/s", "req/s", "higher")
                r.define(key + "_cpu", f"{label}: server CPU per request", "us", "lower")
                r.define(key + "_up", f"{label}: upstream requests per request", "x", "lower")
                targets = [(side, mirrors[side]) for side in SIDES]
                if key == "rps_mtag_get":
                    targets.append(("pullthrough tag_freshness=60s", fresh))
                for run in range(self.mode["wrk_runs"]):
                    for side, m in targets[run % len(targets) :] + targets[: run % len(targets)]:
                        proxy = self.proxies[PT if side.startswith(PT) else REF]
                        proxy.wait_idle(0.2, 10)
                        proxy.reset()
                        cpu0 = tree_cpu(m.pid)
                        res = fn(m.url + path)
                        cpu = tree_cpu(m.pid) - cpu0
                        up = proxy.stats()
                        n = max(res["requests"], 1)
                        bad = (
                            res.get("non_2xx", 0)
                            + res.get("failed", 0)
                            + res.get("socket_errors", 0)
                        )
                        if bad:
                            r.notes.append(f"{label} on {side}: {bad} failed/non-2xx responses")
                        r.add(key, side, res["rps"])
                        r.add(key + "_cpu", side, 1e6 * cpu / n)
                        up_requests = sum(up["requests"].values())
                        if not r.tls:
                            r.add(key + "_up", side, up_requests / n)
                        r.keep(
                            "rates",
                            {
                                "bench": key,
                                "side": side,
                                "run": run,
                                **res,
                                "cpu_s": cpu,
                                "upstream_requests": up["requests"],
                            },
                        )
                        log(
                            f"{label} {side} run {run}: {res['rps']:.0f} req/s "
                            f"({bad} bad, {up_requests} upstream requests, cpu {cpu:.1f}s)"
                        )
        finally:
            self.retire(fresh)

    def sec_loops(self) -> None:
        """pullthrough on uvloop (1 MiB pread chunks) vs the stdlib loop (sendfile), warm."""
        r = self.results
        r.define("loop_tput", "warm GET throughput (verify_on_read off)", "MiB/s", "higher")
        r.define("loop_cpu", "warm GET server CPU per GiB (verify_on_read off)", "s/GiB", "lower")
        big = self.images["big"]
        root = self.runs_dir / "loops-store"
        with self.fresh(PT, root=root) as m:
            self.client(m.url + self.blob_path(big))
            self.settle(m, PT, big.layer_digest)
        # verify_on_read re-hashes and sends through pread on both loops: off, to compare
        # the transfer paths themselves (sendfile on the stdlib loop, pread on uvloop).
        for run in range(self.mode["loop_runs"]):
            for loop in ("uvloop", "asyncio") if run % 2 == 0 else ("asyncio", "uvloop"):
                with self.fresh(PT, loop=loop, root=root, mirror_extra=NO_VERIFY) as m:
                    self.client(m.url + self.blob_path(big))  # first request after start
                    cpu0 = tree_cpu(m.pid)
                    res = self.client(m.url + self.blob_path(big))
                    cpu = tree_cpu(m.pid) - cpu0
                r.add("loop_tput", loop, self.size / MiB / res["wall"])
                r.add("loop_cpu", loop, cpu / (self.size / GiB))
                log(
                    f"loop {loop} run {run}: {self.size / MiB / res['wall']:.0f} MiB/s "
                    f"cpu {cpu / (self.size / GiB):.2f} s/GiB"
                )
        shutil.rmtree(root, ignore_errors=True)

    def sec_huge(self) -> None:
        size = self.mode["huge"]
        if not size:
            self.results.notes.append("4 GiB blob: skipped (quick mode)")
            return
        need = 3 * size + 4 * GiB
        free = shutil.disk_usage(self.work).free
        if free < need:
            self.results.notes.append(
                f"4 GiB blob: skipped, {free / GiB:.1f} GiB free < {need / GiB:.0f} GiB needed"
            )
            return
        img = self.seed_huge()
        r = self.results
        r.define(
            "huge_c20_rss", f"{CONCURRENCY}x cold {size // GiB} GiB peak RSS (tree)", "MiB", "lower"
        )
        r.define("huge_c20_wall", f"{CONCURRENCY}x cold {size // GiB} GiB wall", "s", "lower")
        r.define(
            "huge_c20_bytes",
            f"{CONCURRENCY}x cold {size // GiB} GiB upstream bytes / blob",
            "x",
            "lower",
        )
        with self.fresh(PT) as m:
            out = self._concurrent(m, PT, img, size, cold=True)
        r.add("huge_c20_rss", PT, max(out["peak_rss_mib"], out["hwm_mib"] or 0))
        r.add("huge_c20_wall", PT, out["wall"])
        r.add("huge_c20_bytes", PT, out["upstream_ratio"])
        r.keep("huge", out)
        log(
            f"{CONCURRENCY}x cold {size // GiB} GiB pullthrough: {out['wall']:.1f}s "
            f"rss {out['peak_rss_mib']} MiB (hwm {out['hwm_mib']})"
        )

    def _replicas(self, side: str, root: Path, redis: RedisServer | None) -> list[Server]:
        """REPLICAS mirrors of one kind sharing the storage ``root``, each on its own port."""
        servers: list[Server] = []
        for _ in range(REPLICAS):
            self.counter += 1
            workdir = self.runs_dir / f"{self.counter:03d}-{side}"
            remote = self.proxies[side].url
            server: Server
            env = self.mirror_env()
            if side == REF:
                server = DockerRegistry(workdir, side, remoteurl=remote, extra_env=env)
                server.storage = root  # type: ignore[attr-defined]
            else:
                assert redis is not None
                server = Pullthrough(
                    workdir, side, remoteurl=remote, src=self.src, root=root, extra_env=env
                )
                server.mirror_extra = {  # type: ignore[attr-defined]
                    "index_path": str(workdir / "index.db"),
                    "cluster": {"redis": {"addr": redis.addr}, "advertise": server.url},
                }
            servers.append(server)
            server.start()
        return servers

    def sec_cluster(self) -> None:
        """REPLICAS replicas per side over one shared store; N cold GETs round-robin."""
        r = self.results
        n = self.mode["cluster_gets"]
        what = f"{REPLICAS} replicas, {n}x cold GET"
        r.define("cluster_wall", f"{what} wall", "s", "lower")
        r.define("cluster_bytes", f"{what} upstream bytes / blob", "x", "lower")
        r.define("cluster_blob_gets", f"{what} upstream blob GETs", "n", "lower")
        big = self.images["big"]
        for run in range(self.mode["conc_runs"]):
            for side in order(run):
                base = self.runs_dir / f"cluster-{run}-{side}"
                redis = RedisServer(base / "redis").start() if side == PT else None
                servers: list[Server] = []
                try:
                    servers = self._replicas(side, base / "store", redis)
                    self.proxies[side].reset()
                    urls = [s.url + self.blob_path(big) for s in servers]
                    res = self.client(urls, n)
                    stats = self.settle(servers[0], side, big.layer_digest)
                finally:
                    for s in servers:
                        self.retire(s)
                    if redis is not None:
                        redis.stop()
                    shutil.rmtree(base, ignore_errors=True)
                r.add("cluster_wall", side, res["wall"])
                r.add("cluster_bytes", side, stats["down_bytes"] / self.size)
                if not r.tls:
                    r.add("cluster_blob_gets", side, stats["blob_gets"])
                r.keep(
                    "cluster",
                    {
                        "side": side,
                        "run": run,
                        "wall": res["wall"],
                        "gets": n,
                        "upstream": {k: stats[k] for k in ("down_bytes", "up_bytes", "requests")},
                        "stream_walls": sorted(round(s["end"], 3) for s in res["streams"]),
                    },
                )
                log(
                    f"cluster {side} run {run}: {res['wall']:.2f}s upstream "
                    f"x{stats['down_bytes'] / self.size:.3f} blob GETs {stats['blob_gets']}"
                )

    # ----------------------------------------------------------------- S3

    def sec_s3(self) -> None:
        """Both mirrors storing in buckets on one S3 server (radosgw): cold, warm (from the
        bucket, not a local copy), 20x cold, and 3 replicas on one bucket (reference only)."""
        from s3admin import S3Admin

        from tests.support.s3_server import CephS3, available

        if not available():
            self.results.notes.append(
                "s3: skipped, radosgw not installed (apt-get install radosgw ceph-mon ceph-osd)"
            )
            return
        memory = min(16 * GiB, max(4 * GiB, 12 * self.size))
        # tcp_nodelay: radosgw's default Nagle adds ~40 ms to every small GET or listing (see
        # CephS3), which would time the reference's many small requests, not the mirrors.
        with CephS3(self.runs_dir / "s3", memory_bytes=memory, tcp_nodelay=True) as server:
            self.s3 = S3Admin(server)
            self.s3_server = server
            self.s3_meta = {
                "endpoint": server.endpoint_url,
                "memory_bytes": memory,
                "tcp_nodelay": True,
                "start_seconds": server.timings,
            }
            log(f"S3 server (radosgw) on {server.endpoint_url}, started in {server.timings}")
            for part in (self._s3_cold, self._s3_warm, self._s3_concurrent, self._s3_cluster):
                part()

    def _s3_pids(self) -> list[int]:
        """radosgw, the OSD and the monitor: the S3 server's CPU is theirs."""
        run = self.s3_server.root / "run"
        pids = []
        for name in ("client.rgw", "osd.0", "mon.a"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((run / f"{name}.pid").read_text().strip()))
        return pids

    def _s3_cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self._s3_pids())

    def _s3_drop(self, bucket: str) -> None:
        """Delete the bucket, then have radosgw free its objects now (``gc process``) rather
        than within the next ~15 s, when that work would land in another run's S3 CPU."""
        self.s3.drop(bucket)
        from tests.support.s3_server import RADOSGW_ADMIN

        conf = str(self.s3_server.conf_path)
        done = subprocess.run(
            [RADOSGW_ADMIN, "-c", conf, "-n", "client.rgw", "gc", "process", "--include-all"],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
        )
        if done.returncode != 0:
            self.results.notes.append(f"s3: radosgw-admin gc process: {done.stderr[-200:]}")

    def _s3_bucket(self, what: str, run: int, side: str) -> str:
        self.counter += 1
        return self.s3.create(f"{what}-{run}-{S3_SLUG[side]}-{self.counter}")

    def s3_mirror(
        self,
        side: str,
        bucket: str,
        *,
        local: Path | None = None,
        maxsize: str = "0",
        redis: RedisServer | None = None,
    ) -> Server:
        """A mirror of ``side`` storing in ``bucket`` (pullthrough's local directory:
        ``local``, default a new one in its workdir; ``mirror.s3.localcache.maxsize``)."""
        self.counter += 1
        name = side.split()[0]
        workdir = self.runs_dir / f"{self.counter:03d}-s3-{S3_SLUG[side]}"
        remote = self.proxies[side].url
        storage = self.s3.storage(bucket, S3_ROOT)
        server: Server
        if side == REF:
            server = DockerRegistry(
                workdir, name, remoteurl=remote, extra_env=self.mirror_env(), storage_driver=storage
            )
        else:
            extra = s3_mirror_extra(
                local or workdir / "data", maxsize, redis.addr if redis is not None else None
            )
            server = Pullthrough(
                workdir,
                name,
                remoteurl=remote,
                src=self.src,
                storage={**storage, "redirect": {"disable": side == PT_STREAM}},
                mirror_extra=extra,
                extra_env=self.mirror_env(),
            )
        server.blob_probe = self.s3.probe(bucket, S3_ROOT)
        return server.start(timeout=60)

    def _s3_settle(self, server: Server, side: str, digest: str, t0: float) -> dict[str, Any]:
        """Wait until the blob is in the bucket, then until the upstream link is quiet;
        ``stored_s`` is seconds from ``t0`` (perf_counter) to the object's appearance."""
        deadline = time.monotonic() + 600
        stored = None
        while time.monotonic() < deadline:
            if server.has_blob(digest):  # type: ignore[attr-defined]
                stored = time.perf_counter() - t0
                break
            time.sleep(0.1)
        else:
            self.results.notes.append(f"s3 {side}: blob not in the bucket 600 s after a cold GET")
        quiet = 0.6 if side == REF else 0.2
        stats = self.proxies[side].wait_idle(quiet, max(1.0, deadline - time.monotonic()))
        return {**stats, "stored_s": stored}

    def _s3_cold(self) -> None:
        r = self.results
        r.define("s3_cold_wall", "S3: cold GET wall", "s", "lower")
        r.define("s3_cold_ttfb", "S3: cold GET TTFB", "ms", "lower")
        r.define("s3_cold_stored", "S3: cold GET, blob in the bucket after", "s", "lower")
        r.define("s3_cold_bytes", "S3: cold GET upstream bytes / blob", "x", "lower")
        r.define("s3_cold_blob_gets", "S3: cold GET upstream blob GETs", "n", "lower")
        r.define("s3_cold_cpu", "S3: cold GET server CPU (until settled)", "s", "lower")
        r.define("s3_cold_s3cpu", "S3: cold GET S3 server CPU (radosgw+osd)", "s", "lower")
        big = self.images["big"]
        for run in range(self.mode["runs"]):
            for side in rotate(list(S3_SIDES), run):
                bucket = self._s3_bucket("cold", run, side)
                try:
                    m = self.s3_mirror(side, bucket)
                    try:
                        self.proxies[side].reset()
                        cpu0, s3cpu0 = tree_cpu(m.pid), self._s3_cpu()
                        t0 = time.perf_counter()
                        res = self.client(m.url + self.blob_path(big), follow=True)
                        stats = self._s3_settle(m, side, big.layer_digest, t0)
                        cpu, s3cpu = tree_cpu(m.pid) - cpu0, self._s3_cpu() - s3cpu0
                    finally:
                        self.retire(m)
                finally:
                    self._s3_drop(bucket)
                s = res["streams"][0]
                r.add("s3_cold_wall", side, res["wall"])
                r.add("s3_cold_ttfb", side, 1000 * s["ttfb"])
                r.add("s3_cold_stored", side, stats["stored_s"])
                r.add("s3_cold_bytes", side, stats["down_bytes"] / self.size)
                if not r.tls:
                    r.add("s3_cold_blob_gets", side, stats["blob_gets"])
                r.add("s3_cold_cpu", side, cpu)
                r.add("s3_cold_s3cpu", side, s3cpu)
                r.keep(
                    "s3_cold",
                    {
                        "side": side,
                        "run": run,
                        "wall": res["wall"],
                        "redirects": s.get("redirects"),
                        "stored_s": stats["stored_s"],
                        "cpu": cpu,
                        "s3_cpu": s3cpu,
                        "upstream": {k: stats[k] for k in ("down_bytes", "up_bytes", "requests")},
                    },
                )
                log(
                    f"s3 cold {side} run {run}: {res['wall']:.2f}s, in the bucket after "
                    f"{stats['stored_s'] or -1:.2f}s, upstream "
                    f"x{stats['down_bytes'] / self.size:.4f}, cpu {cpu:.2f}s, S3 cpu {s3cpu:.2f}s"
                )

    def _s3_warm(self) -> None:
        """The blob in the bucket and nowhere else: the reference (no local cache) keeps one
        process; each pullthrough run is a new process on an empty local directory, which
        restores its index from the bucket's snapshot (its start is not timed)."""
        r = self.results
        r.define("s3_warm_tput", "S3: warm GET throughput (from the bucket)", "MiB/s", "higher")
        r.define("s3_warm_ttfb", "S3: warm GET TTFB (307 or 200 status line)", "ms", "lower")
        r.define("s3_warm_first_body", "S3: warm GET first body byte", "ms", "lower")
        r.define("s3_warm_cpu", "S3: warm GET server CPU per GiB", "s/GiB", "lower")
        r.define("s3_warm_s3cpu", "S3: warm GET S3 server CPU per GiB", "s/GiB", "lower")
        r.define("s3_warm_upstream", "S3: warm GET upstream bytes", "B", "lower")
        big, small = self.images["big"], self.images["small"]
        path, small_path = self.blob_path(big), self.blob_path(small)
        buckets = {REF: self._s3_bucket("warm", 0, REF), PT: self._s3_bucket("warm", 0, PT)}
        ref: Server | None = None
        try:
            # Prime: the big and a small blob into each bucket through a cold GET.
            for side in (REF, PT):
                m = self.s3_mirror(side, buckets[side])
                try:
                    for img, p in ((big, path), (small, small_path)):
                        self.client(m.url + p, follow=True)
                        self._s3_settle(m, side, img.layer_digest, time.perf_counter())
                    time.sleep(0.5)  # pullthrough records the upload just after it completes
                finally:
                    if side == REF:
                        ref = m
                    else:
                        self.retire(m)  # its index goes to the bucket at shutdown
            assert ref is not None
            for run in range(self.mode["runs"]):
                for side in rotate(list(S3_SIDES), run):
                    out = self._s3_warm_once(side, ref, buckets, path, small_path)
                    r.add("s3_warm_tput", side, self.size / MiB / out["wall"])
                    r.add("s3_warm_ttfb", side, 1000 * out["ttfb"])
                    r.add("s3_warm_first_body", side, 1000 * out["first_body"])
                    r.add("s3_warm_cpu", side, out["cpu"] / (self.size / GiB))
                    r.add("s3_warm_s3cpu", side, out["s3_cpu"] / (self.size / GiB))
                    r.add("s3_warm_upstream", side, out["upstream_bytes"])
                    r.keep("s3_warm", {"side": side, "run": run, **out})
                    log(
                        f"s3 warm {side} run {run}: {self.size / MiB / out['wall']:.0f} MiB/s "
                        f"({out['redirects']} redirect), cpu {out['cpu']:.2f}s, "
                        f"S3 cpu {out['s3_cpu']:.2f}s, upstream {out['upstream_bytes']} B"
                    )
                    want = 0 if side == PT_STREAM else 1
                    if out["redirects"] != want or out["upstream_bytes"]:
                        r.notes.append(
                            f"s3 warm {side} run {run}: {out['redirects']} redirects (expected "
                            f"{want}), {out['upstream_bytes']} upstream bytes: not from the bucket"
                        )
            for side in S3_SIDES:  # the bytes, once per mirror
                out = self._s3_warm_once(side, ref, buckets, path, small_path, sha256=True)
                ok = out["sha256"] == big.layer_digest
                r.keep("s3_integrity", {"side": side, "ok": ok})
                if not ok:
                    r.errors.append(f"s3 {side} served the wrong bytes: {out['sha256']}")
        finally:
            if ref is not None:
                self.retire(ref)
            for bucket in buckets.values():
                self._s3_drop(bucket)

    def _s3_warm_once(
        self,
        side: str,
        ref: Server,
        buckets: dict[str, str],
        path: str,
        small_path: str,
        sha256: bool = False,
    ) -> dict[str, Any]:
        m = ref if side == REF else self.s3_mirror(side, buckets[PT])
        try:
            if side != REF:  # its first requests after start: the index, the S3 connection
                http_status(f"{m.url}{path}", 10, method="HEAD")
                self.client(m.url + small_path, follow=True)
            proxy = self.proxies[side]
            proxy.wait_idle(0.2, 10)
            proxy.reset()
            cpu0, s3cpu0 = tree_cpu(m.pid), self._s3_cpu()
            res = self.client(m.url + path, follow=True, sha256=sha256)
            cpu, s3cpu = tree_cpu(m.pid) - cpu0, self._s3_cpu() - s3cpu0
        finally:
            if side != REF:
                self.retire(m)
        s = res["streams"][0]
        return {
            "wall": res["wall"],
            "ttfb": s["ttfb"],
            "first_body": s.get("first_body", s["end"]),
            "redirects": s.get("redirects", 0),
            "cpu": cpu,
            "s3_cpu": s3cpu,
            "upstream_bytes": self.proxies[side].stats()["down_bytes"],
            **({"sha256": "sha256:" + s["sha256"]} if sha256 else {}),
        }

    def _s3_concurrent(self) -> None:
        r = self.results
        r.define("s3_c20_wall", f"S3: {CONCURRENCY}x cold GET wall", "s", "lower")
        r.define("s3_c20_bytes", f"S3: {CONCURRENCY}x cold upstream bytes / blob", "x", "lower")
        r.define("s3_c20_cpu", f"S3: {CONCURRENCY}x cold server CPU", "s", "lower")
        r.define("s3_c20_rss", f"S3: {CONCURRENCY}x cold peak RSS (tree)", "MiB", "lower")
        big = self.images["big"]
        for run in range(self.mode["conc_runs"]):
            for side in rotate(list(S3_SIDES), run):
                bucket = self._s3_bucket("c20", run, side)
                try:
                    m = self.s3_mirror(side, bucket)
                    try:
                        proxy = self.proxies[side]
                        proxy.reset()
                        with TreeMonitor(m.pid) as mon:
                            t0 = time.perf_counter()
                            res = self.client(m.url + self.blob_path(big), CONCURRENCY, follow=True)
                            stats = self._s3_settle(m, side, big.layer_digest, t0)
                    finally:
                        self.retire(m)
                finally:
                    self._s3_drop(bucket)
                out = {
                    "wall": res["wall"],
                    **mon.result(),
                    "upstream_ratio": stats["down_bytes"] / self.size,
                    "blob_gets": stats["blob_gets"],
                    "stored_s": stats["stored_s"],
                    "stream_walls": sorted(round(s["end"], 3) for s in res["streams"]),
                }
                r.add("s3_c20_wall", side, out["wall"])
                r.add("s3_c20_bytes", side, out["upstream_ratio"])
                r.add("s3_c20_cpu", side, out["cpu_s"])
                r.add("s3_c20_rss", side, max(out["peak_rss_mib"], out["hwm_mib"] or 0))
                r.keep("s3_concurrent_cold", {"side": side, "run": run, **out})
                log(
                    f"s3 {CONCURRENCY}x cold {side} run {run}: {out['wall']:.2f}s upstream "
                    f"x{out['upstream_ratio']:.3f} cpu {out['cpu_s']:.2f}s "
                    f"rss {out['peak_rss_mib']} MiB (hwm {out['hwm_mib']})"
                )

    def _s3_cluster(self) -> None:
        """REPLICAS mirrors of each side on one bucket and no shared filesystem (pullthrough's
        coordinate through one redis-server; each has its own local directory), N cold GETs
        round-robin, redirects followed."""
        r = self.results
        n = self.mode["cluster_gets"]
        what = f"S3: {REPLICAS} replicas, one bucket, {n}x cold GET"
        r.define("s3_cluster_wall", f"{what} wall", "s", "lower")
        r.define("s3_cluster_bytes", f"{what} upstream bytes / blob", "x", "lower")
        r.define("s3_cluster_blob_gets", f"{what} upstream blob GETs", "n", "lower")
        big = self.images["big"]
        for run in range(self.mode["conc_runs"]):
            for side in order(run):
                bucket = self._s3_bucket("cluster", run, side)
                base = self.runs_dir / f"s3-cluster-{run}-{S3_SLUG[side]}"
                redis = RedisServer(base / "redis").start() if side == PT else None
                servers: list[Server] = []
                try:
                    for _ in range(REPLICAS):
                        servers.append(self.s3_mirror(side, bucket, redis=redis))
                    self.proxies[side].reset()
                    t0 = time.perf_counter()
                    urls = [srv.url + self.blob_path(big) for srv in servers]
                    res = self.client(urls, n, follow=True)
                    stats = self._s3_settle(servers[0], side, big.layer_digest, t0)
                finally:
                    for srv in servers:
                        self.retire(srv)
                    if redis is not None:
                        redis.stop()
                    shutil.rmtree(base, ignore_errors=True)
                    self._s3_drop(bucket)
                r.add("s3_cluster_wall", side, res["wall"])
                r.add("s3_cluster_bytes", side, stats["down_bytes"] / self.size)
                if not r.tls:
                    r.add("s3_cluster_blob_gets", side, stats["blob_gets"])
                r.keep(
                    "s3_cluster",
                    {
                        "side": side,
                        "run": run,
                        "wall": res["wall"],
                        "gets": n,
                        "upstream": {k: stats[k] for k in ("down_bytes", "up_bytes", "requests")},
                        "stream_walls": sorted(round(x["end"], 3) for x in res["streams"]),
                    },
                )
                log(
                    f"s3 cluster {side} run {run}: {res['wall']:.2f}s upstream "
                    f"x{stats['down_bytes'] / self.size:.3f} blob GETs {stats['blob_gets']}"
                )

    # ----------------------------------------------------------------- meta

    def meta_git(self) -> dict[str, Any]:
        def git(*a: str) -> str:
            p = subprocess.run(["git", "-C", str(BENCH.parent), *a], capture_output=True, text=True)
            return p.stdout.strip()

        return {
            "commit": git("rev-parse", "HEAD"),
            "src_dirty": bool(git("status", "--porcelain", "--", "src")),
        }

    def meta(self) -> dict[str, Any]:
        def version(cmd: list[str]) -> str:
            with contextlib.suppress(Exception):
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                return (p.stdout or p.stderr).strip().splitlines()[0]
            return "?"

        git = getattr(self, "git", None) or self.meta_git()
        return {
            "mode": "quick" if self.args.quick else "full",
            "blob_bytes": self.size,
            "huge_bytes": self.mode["huge"],
            "runs": {k: v for k, v in self.mode.items() if "runs" in k},
            "wrk_seconds": self.mode["wrk_seconds"],
            "connections": CONNECTIONS,
            "concurrency": CONCURRENCY,
            "cluster": {"replicas": REPLICAS, "gets": self.mode["cluster_gets"]},
            "wrk_threads": self.args.wrk_threads,
            "git": git,
            "pullthrough_src": str(self.src) if self.src else "installed (work tree)",
            "snapshot": bool(self.args.snapshot),
            "tls_upstream": self.tls is not None,
            "cpus": os.cpu_count(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": os.getloadavg(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "docker_registry": version(["/usr/bin/docker-registry", "--version"]),
            "skopeo": version([SKOPEO, "--version"]),
            "wrk": version(["/usr/bin/wrk", "-v"]),
            "redis_server": version(["/usr/bin/redis-server", "--version"]),
            "radosgw": version(["/usr/bin/radosgw", "--version"]),
            "s3": getattr(self, "s3_meta", None),
            "images": {k: as_dict(v) for k, v in self.images.items()},
        }

    def teardown(self) -> None:
        for p in getattr(self, "proxies", {}).values():
            p.stop()
        stop_all()
        shutil.rmtree(self.runs_dir, ignore_errors=True)
        if self.args.clean:
            shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------- report


TARGETS: list[tuple[str, Callable[[Results], tuple[Any, bool | None]]]] = []


def target(label: str) -> Callable:
    def wrap(fn: Callable[[Results], tuple[Any, bool | None]]) -> Callable:
        TARGETS.append((label, fn))
        return fn

    return wrap


def _m(r: Results, key: str, side: str = PT) -> float | None:
    return r.median(key, side)


def _ratio(r: Results, key: str) -> float | None:
    a, b = _m(r, key, PT), _m(r, key, REF)
    return a / b if a is not None and b else None


def _cmp(value: float | None, ok: Callable[[float], bool], fmt: str) -> tuple[str, bool | None]:
    return ("n/a", None) if value is None else (fmt.format(value), ok(value))


@target("cold GET <= 1.15x straight-from-upstream time")
def _t1(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_m(r, "cold_vs_direct"), lambda v: v <= 1.15, "{:.2f}x")


def _one_fetch(r: Results) -> float:
    """Upstream bytes / blob below which the blob came up once: TLS records add ~0.14%
    (22 bytes per 16 KiB record) and handshakes a few KiB."""
    return 1.003 if r.tls else 1.001


@target("cold GET upstream bytes exactly 1.0x (one blob GET)")
def _t2(r: Results) -> tuple[Any, bool | None]:
    vals = r.metrics.get("cold_bytes", {}).get("values", {}).get(PT)
    gets = r.metrics.get("cold_blob_gets", {}).get("values", {}).get(PT)
    if not vals:
        return "n/a", None
    if r.tls:  # requests are not seen through TLS: bytes only
        return f"{max(vals):.4f}x (TLS; blob GETs not counted)", max(vals) < _one_fetch(r)
    return f"{max(vals):.4f}x, blob GETs {max(gets or [0]):.0f}", max(vals) < 1.001 and max(
        gets or [0]
    ) == 1


@target("cold GET TTFB <= 30 ms")
def _t3(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_m(r, "cold_ttfb"), lambda v: v <= 30, "{:.1f} ms")


@target("warm GET >= 1.0x reference throughput")
def _t4(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "warm_tput"), lambda v: v >= 1.0, "{:.2f}x")


@target("warm GET less CPU/GiB than reference")
def _t5(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "warm_cpu"), lambda v: v < 1.0, "{:.2f}x")


@target("20x cold: upstream bytes 1.0x")
def _t6(r: Results) -> tuple[Any, bool | None]:
    vals = r.metrics.get("c20_bytes", {}).get("values", {}).get(PT)
    return ("n/a", None) if not vals else (f"{max(vals):.4f}x", max(vals) < _one_fetch(r))


@target("20x cold: wall <= 0.35x reference")
def _t7(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "c20_wall"), lambda v: v <= 0.35, "{:.2f}x")


@target("skopeo pull cold <= 1.10x direct")
def _t8(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_m(r, "skopeo_vs_direct"), lambda v: v <= 1.10, "{:.2f}x")


@target("GET /v2/ >= 5x reference req/s")
def _t9(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "rps_base"), lambda v: v >= 5, "{:.2f}x")


@target("manifest by digest GET >= 5x reference req/s")
def _t10(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "rps_mdigest_get"), lambda v: v >= 5, "{:.2f}x")


@target("manifest by digest HEAD >= 5x reference req/s")
def _t11(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "rps_mdigest_head"), lambda v: v >= 5, "{:.2f}x")


@target("manifest by tag GET >= 10x reference req/s (tag_freshness 0)")
def _t12(r: Results) -> tuple[Any, bool | None]:
    return _cmp(_ratio(r, "rps_mtag_get"), lambda v: v >= 10, "{:.2f}x")


@target("peak RSS <= 80 MiB serving 20x1 GiB streams (cold and warm)")
def _t13(r: Results) -> tuple[Any, bool | None]:
    vals = [v for k in ("c20_rss", "w20_rss") if (v := _m(r, k)) is not None]
    return ("n/a", None) if not vals else (f"{max(vals):.0f} MiB", max(vals) <= 80)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}" if v else "0"


def render(summary: dict[str, Any], r: Results, meta: dict[str, Any]) -> str:
    def spread(side: dict[str, Any] | None) -> str:
        return "-" if not side or side["spread_pct"] is None else f"{side['spread_pct']:.0f}%"

    rows = [("metric", "unit", REF, PT, "pt/ref", "spread ref", "spread pt")]
    s3_rows = [("S3 (radosgw, loopback)", "unit", REF, PT, "pt/ref", "spread ref", "spread pt")]
    baseline_rows = [("baseline (no mirror)", "unit", "median", "", "", "spread", "")]
    loop_rows = [
        (
            "pullthrough warm GET",
            "unit",
            "uvloop",
            "asyncio",
            "asyncio/uvloop",
            "spread uv",
            "spread aio",
        )
    ]
    for key, m in summary.items():
        sides = m["sides"]
        if key.startswith("loop_"):
            uv, aio = sides.get("uvloop"), sides.get("asyncio")
            ratio = aio["median"] / uv["median"] if uv and aio and uv["median"] else None
            loop_rows.append(
                (
                    m["label"],
                    m["unit"],
                    _fmt(uv and uv["median"]),
                    _fmt(aio and aio["median"]),
                    _fmt(ratio),
                    spread(uv),
                    spread(aio),
                )
            )
            continue
        if "upstream" in sides:
            up = sides["upstream"]
            baseline_rows.append(
                (m["label"], m["unit"], _fmt(up["median"]), "", "", spread(up), "")
            )
            continue
        ref, pt = sides.get(REF), sides.get(PT)
        text = m.get("text", {})
        target = s3_rows if key.startswith("s3_") else rows
        target.append(
            (
                m["label"].removeprefix("S3: "),
                m["unit"],
                text.get(REF) or _fmt(ref and ref["median"]),
                text.get(PT) or _fmt(pt and pt["median"]),
                _fmt(m["pt_over_ref"]),
                spread(ref),
                spread(pt),
            )
        )
        for extra, vals in sides.items():
            if extra not in (REF, PT):
                ratio = vals["median"] / ref["median"] if ref and ref["median"] else None
                target.append(
                    (
                        f"  {m['label'].removeprefix('S3: ')} [{extra}]",
                        m["unit"],
                        "",
                        _fmt(vals["median"]),
                        _fmt(ratio),
                        "",
                        spread(vals),
                    )
                )

    def table(data: list[tuple[str, ...]]) -> str:
        widths = [max(len(row[i]) for row in data) for i in range(len(data[0]))]
        lines = []
        for n, row in enumerate(data):
            pairs = zip(row[1:], widths[1:], strict=True)
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in pairs]
            lines.append("  ".join(cells).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    out = [
        f"pullthrough bench ({meta['mode']}): blob {meta['blob_bytes'] / MiB:.0f} MiB, "
        f"commit {meta['git']['commit'][:12]}"
        + (" (src dirty)" if meta["git"]["src_dirty"] and not meta["snapshot"] else "")
        + (", upstream: TLS" if meta.get("tls_upstream") else "")
        + f", {meta['cpus']} CPUs; medians, spread = (max-min)/median",
        "",
    ]
    if len(baseline_rows) > 1:
        out += [table(baseline_rows), ""]
    if len(rows) > 1:
        out += [table(rows), ""]
    if len(s3_rows) > 1:
        out += [table(s3_rows), ""]
    if len(loop_rows) > 1:
        out += [table(loop_rows), ""]
    trows = [("target", "pullthrough", "met")]
    for label, fn in TARGETS:
        value, ok = fn(r)
        trows.append((label, str(value), {True: "yes", False: "NO", None: "-"}[ok]))
    out += [table(trows), ""]
    for note in r.notes:
        out.append(f"note: {note}")
    for err in r.errors:
        lines = [x for x in err.replace("\\n", "\n").splitlines() if x.strip()]
        out.append(
            f"ERROR: {lines[0][:160]}"
            + (f" ... {lines[-1].strip()[:200]}" if len(lines) > 1 else "")
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB blob, 2 runs, 3 s rates (<3 min)")
    p.add_argument(
        "--workdir",
        default="/tmp/pullthrough-bench",
        help="upstream storage (kept: seeded images are reused), mirror caches",
    )
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="benchmark `git archive HEAD` of src/ instead of the work tree",
    )
    p.add_argument("--pullthrough-src", help="directory holding the pullthrough package to bench")
    p.add_argument(
        "--tls-upstream",
        action="store_true",
        help="the upstream serves TLS (a CA made for the run, which both mirrors trust "
        "through SSL_CERT_FILE)",
    )
    p.add_argument(
        "--only",
        help="comma-separated sections: baseline,cold,concurrent_cold,"
        "skopeo,warm,loops,huge,cluster,s3 (cold needs baseline for its ratios)",
    )
    p.add_argument("--runs", type=int, help="override the number of runs per measurement")
    p.add_argument("--blob-mib", type=int, help="override the blob size (MiB)")
    p.add_argument("--wrk-seconds", type=float, help="override the duration of each rate run")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--no-huge", action="store_true", help="skip the 4 GiB blob")
    p.add_argument("--clean", action="store_true", help="delete the workdir at the end")
    p.add_argument("--out", default=str(BENCH / "results"), help="directory for the JSON")
    args = p.parse_args()
    tools = ["/usr/bin/docker-registry", SKOPEO, "/usr/bin/wrk", "/usr/bin/ab"]
    for tool in tools + (["/usr/bin/openssl"] if args.tls_upstream else []):
        if not Path(tool).exists():
            p.error(f"{tool} missing: apt-get install docker-registry skopeo wrk apache2-utils")
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.runs:
        mode.update(
            runs=args.runs,
            conc_runs=args.runs,
            skopeo_runs=args.runs,
            loop_runs=args.runs,
            wrk_runs=args.runs,
        )
    if args.blob_mib:
        mode["blob"] = args.blob_mib * MiB
    if args.wrk_seconds:
        mode["wrk_seconds"] = args.wrk_seconds
    if args.no_huge:
        mode["huge"] = 0

    bench = Bench(args, mode)
    t0 = time.perf_counter()
    try:
        bench.setup()
        bench.run_sections()
    except KeyboardInterrupt:
        bench.results.errors.append("interrupted")
    finally:
        meta = bench.meta() if bench.images else {}
        bench.teardown()
    if not meta:
        log("setup failed; nothing measured")
        return 1
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    summary = bench.results.summary()
    report = render(summary, bench.results, meta)
    print(report)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{meta['mode']}.json"
    path.write_text(
        json.dumps(
            {
                "meta": meta,
                "metrics": summary,
                "targets": [
                    {"target": label, "value": v, "met": ok}
                    for label, fn in TARGETS
                    for v, ok in [fn(bench.results)]
                ],
                "notes": bench.results.notes,
                "errors": bench.results.errors,
                "raw": bench.results.raw,
            },
            indent=1,
        )
    )
    print(f"\nwrote {path} ({meta['seconds']:.0f} s)")
    return 1 if bench.results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
