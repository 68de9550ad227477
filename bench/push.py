"""Push throughput: one large blob uploaded to a hosted repository of pullthrough and to the
reference registry (Debian's docker-registry, not in proxy mode), side by side.

Two ways, as clients push: monolithic (``POST ?digest=`` with the whole body) and chunked
(``POST``, ``PATCH`` chunks with ``Content-Range``, ``PUT ?digest=``). The time is from the
first byte sent to the 201 (the registry has verified and stored the blob). The servers'
order alternates per run. Writes ``bench/results/<time>-push.json``.

    python bench/push.py               # 1 GiB, 64 MiB chunks, 2 runs
    python bench/push.py --size 256MiB --runs 1
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import DockerRegistry, Pullthrough, Server, stop_all  # noqa: E402

MiB = 1024 * 1024
SEND = 4 * MiB
HOSTED = {
    "hosted": {"repositories": ["bench"]},
    "access": [
        {"repositories": ["**"]},
        {"repositories": ["bench/**"], "actions": ["pull", "push"]},
    ],
}


def _size(text: str) -> int:
    units = {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _blob(path: Path, size: int) -> str:
    """A file of ``size`` random bytes (made once), and its digest."""
    hasher = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(SEND, left))
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


def monolithic(server: Server, repo: str, blob: Path, digest: str, size: int) -> float:
    """POST for a session, then one PUT with the whole body (the reference registry
    refuses a body on POST; clients push this way)."""
    began = time.monotonic()
    resp = _request(server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, (server.name, resp.status)
    parts = urlsplit(resp.getheader("Location") or "")
    sep = "&" if parts.query else "?"
    path = f"{parts.path}{'?' + parts.query if parts.query else ''}{sep}digest={digest}"
    resp = _request(server, "PUT", path, blob, (0, size))
    assert resp.status == 201, (server.name, resp.status)
    return time.monotonic() - began


def chunked(server: Server, repo: str, blob: Path, digest: str, size: int, chunk: int) -> float:
    began = time.monotonic()
    resp = _request(server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, (server.name, resp.status)
    location = resp.getheader("Location") or ""
    for start in range(0, size, chunk):
        length = min(chunk, size - start)
        parts = urlsplit(location)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        resp = _request(
            server,
            "PATCH",
            path,
            blob,
            (start, length),
            {
                "Content-Range": f"{start}-{start + length - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert resp.status == 202, (server.name, resp.status)
        location = resp.getheader("Location") or location
    parts = urlsplit(location)
    sep = "&" if parts.query else "?"
    path = f"{parts.path}{'?' + parts.query if parts.query else ''}{sep}digest={digest}"
    resp = _request(server, "PUT", path)
    assert resp.status == 201, (server.name, resp.status)
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--chunk", default="64MiB")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    size, chunk = _size(args.size), _size(args.chunk)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        work = Path(tmp)
        blob = work / "blob"
        digest = _blob(blob, size)
        reference = DockerRegistry(work / "reference", "reference").start()
        mirror = Pullthrough(
            work / "pullthrough", "pullthrough", remoteurl="http://127.0.0.1:9", mirror_extra=HOSTED
        ).start()
        try:
            for run in range(args.runs):
                order = [reference, mirror] if run % 2 == 0 else [mirror, reference]
                for server in order:
                    for way in ("monolithic", "chunked"):
                        repo = f"bench/{way}-{run}"
                        seconds = (
                            monolithic(server, repo, blob, digest, size)
                            if way == "monolithic"
                            else chunked(server, repo, blob, digest, size, chunk)
                        )
                        rate = size / MiB / seconds
                        rows.append(
                            {
                                "run": run,
                                "server": server.name,
                                "way": way,
                                "seconds": seconds,
                                "mib_s": rate,
                            }
                        )
                        print(f"run {run} {server.name:12} {way:10} {seconds:7.2f} s {rate:8.1f}")
        finally:
            stop_all()
    print(f"\npush of {args.size} (chunks of {args.chunk}), best of {args.runs}, MiB/s:")
    for way in ("monolithic", "chunked"):
        best = {
            name: max(float(r["mib_s"]) for r in rows if r["server"] == name and r["way"] == way)  # type: ignore[arg-type]
            for name in ("reference", "pullthrough")
        }
        ratio = best["pullthrough"] / best["reference"]
        ref, ours = best["reference"], best["pullthrough"]
        print(f"  {way:10}  reference {ref:8.1f}   pullthrough {ours:8.1f}   ({ratio:.2f}x)")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (out / f"{stamp}-push.json").write_text(
        json.dumps({"size": size, "chunk": chunk, "runs": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
