"""A client that pulls an image (manifest by tag, then every blob by GET) from one replica,
hashing as it reads, and records what happened."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from tests.support.images import MANIFEST_ACCEPT, PushedImage

CHUNK = 1024 * 1024


@dataclass
class Pull:
    """What one client got: every digest it verified, or the first error."""

    host: str
    verified: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    finished: float = 0.0  # time.monotonic() when it ended


def get_blob(host: str, repo: str, digest: str, timeout: float = 120.0) -> tuple[int, str, int]:
    """(status, sha256 of the body, its length) of one blob GET."""
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{digest}")
        resp = conn.getresponse()
        hasher, size = hashlib.sha256(), 0
        while chunk := resp.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        return resp.status, "sha256:" + hasher.hexdigest(), size
    finally:
        conn.close()


def pull(host: str, image: PushedImage, out: Pull, start: threading.Event | None = None) -> None:
    """Pull ``image`` from ``host``: its manifest by tag, then each blob; every digest is
    checked. Any failure is recorded in ``out.error`` (asserted on by the test)."""
    if start is not None:
        start.wait(30)
    began = time.monotonic()
    try:
        conn = http.client.HTTPConnection(host, timeout=60)
        try:
            conn.request(
                "GET",
                f"/v2/{image.repo}/manifests/{image.tag}",
                headers={"Accept": MANIFEST_ACCEPT},
            )
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise AssertionError(f"manifest {image.ref}: {resp.status} {body[:200]!r}")
        if "sha256:" + hashlib.sha256(body).hexdigest() != image.digest:
            raise AssertionError(f"manifest {image.ref}: wrong bytes")
        out.verified.append(image.digest)
        doc = json.loads(body)
        for digest in [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]:
            status, got, _ = get_blob(host, image.repo, digest)
            if status != 200 or got != digest:
                raise AssertionError(f"blob {digest}: status {status}, got {got}")
            out.verified.append(digest)
    except Exception as exc:  # recorded, asserted on by the test
        out.error = f"{type(exc).__name__}: {exc}"
    out.finished = time.monotonic()
    out.seconds = out.finished - began
