"""Memory of pullthrough asked for many distinct repository names on a token-auth upstream
(Docker Hub's scheme), loopback only: the work tree, and optionally older commits with
``--before REF``.

Repository names are the client's to choose, and each asks the upstream for a token of its
own scope. A mirror that keeps what it learns per name (tokens, maps keyed by repository)
without a bound grows with every name a client makes up. This starts a token issuer (the
test suite's ``TokenIssuer``, x5c-signed JWTs of a few KiB like Docker Hub's) and a
``docker-registry`` using it, then pullthrough with the issuer's credentials; asks for a
manifest in ``--names`` distinct repositories that do not exist (each: 401, a token, 404;
bounded by count and ``--seconds``) from ``--clients`` threads, and reads the mirror's RSS
before and after. Prints a table and writes ``bench/results/<timestamp>-token-names.json``.

    python bench/token_names.py [--before a04740f [--before main]] [--names 20000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))  # tests.support: the token issuer and registry

from procs import LOOPBACK, Pullthrough, stop_all, tree_rss_kib  # noqa: E402

from tests.support.registry import Registry  # noqa: E402
from tests.support.tokens import TokenIssuer  # noqa: E402

USER, PASSWORD = "bench-user", "bench-password"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
WARMUP = 300  # names asked before the first reading (imports, pools, first tokens)


class CredentialedPullthrough(Pullthrough):
    """``pullthrough serve`` holding the upstream's credentials (``proxy.username``)."""

    def write_config(self) -> None:
        super().write_config()
        import yaml

        cfg = yaml.safe_load(self.config_path.read_text())
        cfg["proxy"].update({"username": USER, "password": PASSWORD})
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def ask(host: str, names: range, prefix: str, clients: int, deadline: float) -> dict[str, int]:
    """GET a manifest of ``{prefix}/n{i}`` for every i in ``names``, from ``clients``
    threads each on one keep-alive connection, until done or ``deadline``."""
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    todo = iter(names)

    def worker() -> None:
        h, _, p = host.partition(":")
        conn = http.client.HTTPConnection(h, int(p), timeout=30)
        seen: dict[str, int] = {}
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(todo, None)
                if i is None:
                    break
                conn.request(
                    "GET", f"/v2/{prefix}/n{i}/manifests/latest", headers={"Accept": ACCEPT}
                )
                resp = conn.getresponse()
                resp.read()
                seen[str(resp.status)] = seen.get(str(resp.status), 0) + 1
        finally:
            conn.close()
            with lock:
                for key, value in seen.items():
                    statuses[key] = statuses.get(key, 0) + value

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def measure(mirror: Pullthrough, names: int, clients: int, seconds: float) -> dict[str, Any]:
    warm = ask(mirror.host, range(WARMUP), "warmup", clients, time.monotonic() + 60)
    time.sleep(1.0)
    before = tree_rss_kib(mirror.pid)
    began = time.monotonic()
    statuses = ask(mirror.host, range(names), "junk", clients, began + seconds)
    elapsed = time.monotonic() - began
    time.sleep(1.0)
    after = tree_rss_kib(mirror.pid)
    return {
        "warmup_statuses": warm,
        "statuses": statuses,
        "asked": sum(statuses.values()),
        "seconds": elapsed,
        "rss_before_kib": before,
        "rss_after_kib": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", action="append", default=[], help="also bench this commit's src/ (repeatable)"
    )
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop asking after this")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pt-tokennames-"))
    issuer = TokenIssuer(users={USER: PASSWORD}, root=work / "issuer")
    registry = Registry(work / "upstream", token_auth=issuer)
    try:
        issuer.start()
        registry.start()
        srcs: dict[str, Path] = {}
        for ref in args.before:
            snap = work / f"before-{ref}"
            snap.mkdir()
            archive = subprocess.run(
                ["git", "archive", ref, "src"],
                cwd=BENCH_DIR.parent,
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(snap)], input=archive, check=True)
            srcs[f"pullthrough@{ref}"] = snap / "src"
        srcs["pullthrough"] = BENCH_DIR.parent / "src"  # the work tree
        results: dict[str, dict[str, Any]] = {}
        for name, src in srcs.items():
            mirror = CredentialedPullthrough(
                work / name.replace("@", "-"), name, remoteurl=registry.url, src=src
            )
            mirror.start()
            try:
                results[name] = measure(mirror, args.names, args.clients, args.seconds)
            finally:
                mirror.stop()
            results[name]["token_requests"] = issuer.count()
            issuer.reset()
        print(
            f"\nRSS of pullthrough asked for {args.names} distinct repository names on a "
            f"token-auth upstream ({args.clients} clients, MiB)"
        )
        print(
            f"{'mirror':<28} {'asked':>7} {'secs':>6} {'tokens':>7} "
            f"{'before':>8} {'after':>8} {'growth':>8}"
        )
        for name, r in results.items():
            before, after = r["rss_before_kib"] / 1024, r["rss_after_kib"] / 1024
            print(
                f"{name:<28} {r['asked']:>7} {r['seconds']:6.0f} {r['token_requests']:>7} "
                f"{before:8.1f} {after:8.1f} {after - before:+8.1f}"
            )
        out = BENCH_DIR / "results"
        out.mkdir(exist_ok=True)
        path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-token-names.json"
        doc = {"args": vars(args), "host": LOOPBACK, "results": results}
        path.write_text(json.dumps(doc, indent=1))
        print(f"wrote {path}")
    finally:
        stop_all()
        registry.stop()
        issuer.stop()


if __name__ == "__main__":
    main()
