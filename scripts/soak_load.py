"""The soak's clients: pullers that check every byte they get, and a sender of hostile requests.

Every answer is counted by status. A puller knows the exact content of every manifest and blob
(read from the upstream before the run), so a complete answer with other bytes is counted as
wrong; a transfer cut short is only "aborted" (the mirror's way of refusing to finish a
download it could not verify). Each loop ends at ``deadline``; each request is bounded by the
session's time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=10, sock_read=45)
NOTES_KEPT = 20  # examples of wrong answers and 500s kept for the report


@dataclass(frozen=True)
class Target:
    """An image as the upstream holds it: its tag, top manifest and every manifest's blobs."""

    repo: str
    tag: str
    digest: str
    children: tuple[str, ...]  # platform manifests of an index
    blobs_of: dict[str, tuple[str, ...]]  # manifest digest -> config and layer digests


@dataclass(frozen=True)
class Content:
    """The known truth: raw manifests and blob bytes by digest, and the images to pull."""

    manifests: dict[str, bytes]
    blobs: dict[str, bytes]
    targets: tuple[Target, ...]
    hot: int  # the first ``hot`` targets are pulled most of the time (warm pulls)


@dataclass
class Tally:
    """What the clients saw; ``take()`` hands over the counts since the last call."""

    statuses: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    wrong_bytes: int = 0
    aborted: int = 0
    # HEADs of uncached blobs whose size was not the blob's: a HEAD carries no bytes, and the
    # mirror can only repeat the upstream's answer (the html200 fault makes it lie). Reported,
    # not part of the verdict.
    wrong_heads: int = 0
    notes: list[str] = field(default_factory=list)  # wrong answers and 500s, first few

    def note(self, text: str) -> None:
        if len(self.notes) < NOTES_KEPT:
            self.notes.append(text)

    def take(self) -> tuple[dict[str, int], int, int, int]:
        out = (dict(self.statuses), self.wrong, self.wrong_bytes, self.aborted)
        self.statuses.clear()
        self.wrong = self.wrong_bytes = self.aborted = 0
        return out


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Puller:
    """One client pulling images through the mirror: manifests by tag and digest, blobs whole
    and by range, HEADs; every body and digest header checked against ``content``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        content: Content,
        tally: Tally,
        rng: random.Random,
    ) -> None:
        self.session = session
        self.base = base
        self.content = content
        self.tally = tally
        self.rng = rng

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.pull(self._pick())
            # A little think time: several clients, not a flood (the bench measures floods).
            await asyncio.sleep(self.rng.uniform(0.0, 0.1))

    def _pick(self) -> Target:
        targets = self.content.targets
        if self.rng.random() < 0.6:
            return targets[self.rng.randrange(self.content.hot)]
        return targets[self.rng.randrange(len(targets))]

    async def pull(self, target: Target) -> None:
        body = await self._get_manifest(target, target.tag, target.digest)
        if body is None:
            return
        manifest = target.digest
        if target.children:
            manifest = self.rng.choice(target.children)
            if await self._get_manifest(target, manifest, manifest) is None:
                return
        elif self.rng.random() < 0.3:
            await self._get_manifest(target, manifest, manifest)
        for digest in target.blobs_of[manifest]:
            roll = self.rng.random()
            if roll < 0.15:
                await self._head_blob(target, digest)
            elif roll < 0.3:
                await self._get_range(target, digest)
            else:
                await self._get_blob(target, digest)

    async def _request(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], bytes | None] | None:
        """``(status, headers, body)``; body ``None`` when the transfer was cut short;
        ``None`` when no answer came at all."""
        try:
            async with self.session.request(
                method, self.base + path, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                self.tally.statuses[str(status)] += 1
                try:
                    body: bytes | None = await resp.read()
                except (aiohttp.ClientError, TimeoutError):
                    self.tally.aborted += 1
                    body = None
                if status == 500:
                    self.tally.note(f"500 for {method} {path}: {(body or b'')[:300]!r}")
                return status, resp.headers, body
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.tally.statuses["err"] += 1
            return None

    def _wrong(self, what: str, size: int) -> None:
        self.tally.wrong += 1
        self.tally.wrong_bytes += size
        self.tally.note(what)

    async def _get_manifest(self, target: Target, reference: str, want: str) -> bytes | None:
        path = f"/v2/{target.repo}/manifests/{reference}"
        got = await self._request("GET", path, {"Accept": MANIFEST_ACCEPT})
        if got is None:
            return None
        status, headers, body = got
        if status != 200 or body is None:
            return None
        header = headers.get("Docker-Content-Digest")
        if sha256(body) != want or body != self.content.manifests[want] or header != want:
            self._wrong(f"GET {path}: body {sha256(body)} header {header}, want {want}", len(body))
            return None
        return body

    async def _get_blob(self, target: Target, digest: str) -> None:
        path = f"/v2/{target.repo}/blobs/{digest}"
        got = await self._request("GET", path, {})
        if got is None:
            return
        status, _, body = got
        if status == 200 and body is not None and sha256(body) != digest:
            self._wrong(f"GET {path}: {len(body)} bytes hashing to {sha256(body)}", len(body))

    async def _head_blob(self, target: Target, digest: str) -> None:
        path = f"/v2/{target.repo}/blobs/{digest}"
        got = await self._request("HEAD", path, {})
        if got is not None and got[0] == 200:
            headers = got[1]
            length = headers.get("Content-Length")
            header = headers.get("Docker-Content-Digest")
            size = len(self.content.blobs[digest])
            if length != str(size) or header not in (None, digest):
                self.tally.wrong_heads += 1
                self.tally.note(f"HEAD {path}: length {length} digest {header}, want {size}")

    async def _get_range(self, target: Target, digest: str) -> None:
        known = self.content.blobs[digest]
        first = self.rng.randrange(len(known))
        last = min(len(known) - 1, first + self.rng.randrange(1, 256 * 1024))
        path = f"/v2/{target.repo}/blobs/{digest}"
        got = await self._request("GET", path, {"Range": f"bytes={first}-{last}"})
        if got is None:
            return
        status, headers, body = got
        if body is None:
            return
        if status == 200 and sha256(body) != digest:  # a Range may be answered whole
            self._wrong(f"GET {path} (range, 200): hashes to {sha256(body)}", len(body))
        elif status == 206:
            content_range = headers.get("Content-Range")
            if body != known[first : last + 1] or content_range != (
                f"bytes {first}-{last}/{len(known)}"
            ):
                self._wrong(
                    f"GET {path} bytes={first}-{last}: 206 {content_range}, {len(body)} bytes",
                    len(body),
                )


# ---------------------------------------------------------------------------- hostile


def hostile_requests(content: Content) -> list[tuple[str, bytes]]:
    """``(name, raw request)`` pairs a stranger might send; none may get a 500."""
    target = content.targets[0]
    blob = target.blobs_of[target.digest][-1]
    other = next(t for t in content.targets if blob not in t.blobs_of.get(t.digest, ()))
    repo = target.repo

    def get(path: str, *headers: str, method: str = "GET") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: soak", *headers, "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    return [
        ("dotdot name", get("/v2/../etc/passwd/manifests/x")),
        ("encoded dotdot", get("/v2/%2e%2e/%2e%2e/etc/passwd/manifests/x")),
        ("upper-case name", get("/v2/SOAK/App/manifests/v1")),
        ("bad digest", get(f"/v2/{repo}/blobs/sha256:zz")),
        ("short digest", get(f"/v2/{repo}/manifests/sha256:{'0' * 63}")),
        ("unknown algorithm", get(f"/v2/{repo}/blobs/md5:{'0' * 32}")),
        ("unknown digest", get(f"/v2/{repo}/blobs/sha256:{'0' * 64}")),
        ("blob of another repo", get(f"/v2/{other.repo}/blobs/{blob}")),
        ("NUL in tag", get(f"/v2/{repo}/manifests/%00")),
        ("backwards range", get(f"/v2/{repo}/blobs/{blob}", "Range: bytes=9-1")),
        ("range past end", get(f"/v2/{repo}/blobs/{blob}", "Range: bytes=999999999-")),
        ("garbage range", get(f"/v2/{repo}/blobs/{blob}", "Range: pages=1-2,,x")),
        ("many ranges", get(f"/v2/{repo}/blobs/{blob}", "Range: bytes=" + "0-0," * 2000 + "1-1")),
        ("64 KiB header", get(f"/v2/{repo}/manifests/v1", "X-Big: " + "a" * 65536)),
        ("200 headers", get(f"/v2/{repo}/manifests/v1", *(f"X-H{i}: v" for i in range(200)))),
        ("16 KiB path", get("/v2/" + "a/" * 8192 + "manifests/v1")),
        ("unknown upstream", get(f"/v2/{repo}/manifests/v1?ns=not-configured.invalid")),
        ("delete", get(f"/v2/{repo}/manifests/v1", method="DELETE")),
        ("upload", get(f"/v2/{repo}/blobs/uploads/", "Content-Length: 0", method="POST")),
        ("odd method", get("/v2/", method="FROB")),
        (
            "huge body",
            get(f"/v2/{repo}/manifests/v1", f"Content-Length: {1 << 30}") + b"x" * 1024,
        ),
        ("bad chunked", get("/v2/", "Transfer-Encoding: chunked") + b"zz\r\nxx\r\n"),
        ("tls hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        ("no version", b"GET /v2/\r\n\r\n"),
    ]


HOSTILE_TIMEOUT = 15.0


async def send_raw(host: str, port: int, raw: bytes) -> str:
    """Send ``raw`` on a new connection and return the answer's status (``"err"``: none)."""
    try:
        async with asyncio.timeout(HOSTILE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(raw)
                # The server may answer (and close) before it has read it all.
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return "err"
    parts = line.split()
    return parts[1].decode() if len(parts) >= 2 and parts[1].isdigit() else "err"


async def hostile(
    host: str,
    port: int,
    content: Content,
    tally: Tally,
    rng: random.Random,
    deadline: float,
    on_answer: Callable[[str, str], None] | None = None,
) -> None:
    """Send hostile requests one after another (with short pauses) until ``deadline``."""
    requests = hostile_requests(content)
    while time.monotonic() < deadline:
        name, raw = rng.choice(requests)
        status = await send_raw(host, port, raw)
        tally.statuses[status] += 1
        if status == "500":
            tally.note(f"500 for hostile request {name!r}: {raw[:200]!r}")
        if on_answer is not None:
            on_answer(name, status)
        await asyncio.sleep(rng.uniform(0.05, 0.25))


def blobs_of_manifest(raw: bytes) -> tuple[str, ...]:
    """Config and layer digests of an image manifest (empty for an index)."""
    doc = json.loads(raw)
    config = doc.get("config")
    found = [config["digest"]] if config else []
    return tuple(found + [layer["digest"] for layer in doc.get("layers", [])])
