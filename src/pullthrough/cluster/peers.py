"""Replicas on one bucket (``storage.s3``) stream a blob to each other while one of them
fetches it: the replica that lost the race for a claim reads the owner's download over
HTTP instead of waiting for the upload to the bucket.

On a shared store followers tail the owner's temp file (``cluster.follow``); on a bucket
the owner's temp file is on its own disk, so the owner serves it:
``GET /_pullthrough/peer/blobs/<upstream>/<digest>`` on its registry port (its
``mirror.cluster.advertise`` URL, which the claim names), answered from the running fetch
exactly as its own clients are (the last byte once the digest matched) or from its local
copy once stored.

- **Who may ask**: a replica that knows ``mirror.cluster.secret``. Each request carries an
  HMAC of (upstream, digest, expiry) under it, so a client that reaches the port reads
  nothing through this path (the registry API, with its authentication and
  ``mirror.provenance``, is the only way in for clients). Without a secret the path does
  not exist and followers wait for the bucket.
- **Nothing from a peer is trusted**: the URL comes from Redis (checked: http or https,
  a host, nothing else), and the bytes land in the follower's own temp file and are
  verified against the digest before its clients get their last byte, as an upstream's.
- **When the stream breaks** (the owner died or restarted, a 404 because its copy is
  gone), ``PeerLost`` ends the follower's download with its temp file intact; the driver
  (``cluster.bucket_fetching``) then continues that same file from the bucket, from the
  claim's next owner, or from the upstream as the owner itself, so its clients' transfers
  carry on.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast
from urllib.parse import quote, urlsplit

from pullthrough.mirror.fetch import ClaimLost
from pullthrough.upstream.client import BlobStream, UpstreamClient
from pullthrough.upstream.wire import OperatorWire

PEER_PATH = "/_pullthrough/peer/blobs/{upstream}/{digest}"
PEER_NAME = "peer"  # how reads from another replica are named in logs and metrics
SCHEME = "PullthroughPeer"
# A signed request is good for this long; clocks of replicas may differ by up to SKEW.
LIFETIME = 60.0
SKEW = 60.0


class PeerLost(ClaimLost):
    """The owner's stream could not be read (refused, broken, 404): stop, keep the temp
    file as it is, and let the driver find the rest elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PeerKey:
    """Signs and checks peer requests with ``mirror.cluster.secret``."""

    def __init__(self, secret: str) -> None:
        # Derived, so the configured string is never used as a key for anything else.
        self._key = hashlib.sha256(b"pullthrough peer blobs\0" + secret.encode()).digest()

    def _mac(self, upstream: str, digest: str, expires: int) -> str:
        message = f"{upstream}\n{digest}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, upstream: str, digest: str, now: float | None = None) -> str:
        """The ``Authorization`` header for a request of ``digest`` from ``upstream``."""
        expires = int((time.time() if now is None else now) + LIFETIME)
        return f"{SCHEME} {expires}:{self._mac(upstream, digest, expires)}"

    def verify(
        self, header: str | None, upstream: str, digest: str, now: float | None = None
    ) -> bool:
        """Whether ``header`` was signed with this secret for exactly this request and has
        not expired."""
        if header is None or len(header) > 256:
            return False
        scheme, _, token = header.partition(" ")
        expires_text, _, mac = token.partition(":")
        if scheme != SCHEME or not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        now = time.time() if now is None else now
        if not now - SKEW <= expires <= now + LIFETIME + SKEW:
            return False
        return hmac.compare_digest(mac, self._mac(upstream, digest, expires))


def peer_url(node: str) -> str | None:
    """A claim's node as a base URL to dial, or None when it is not one (it came from
    Redis: only http(s)://host[:port] with nothing else is accepted)."""
    try:
        parts = urlsplit(node)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        return None
    if parts.path not in ("", "/"):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class Peers:
    """This replica's side of peer streaming: the key, and one connection pool to the
    other replicas."""

    def __init__(self, secret: str, *, connect_timeout: float, read_timeout: float) -> None:
        self.key = PeerKey(secret)
        # The replicas are the operator's own (often private) addresses, like the bucket.
        self.wire = OperatorWire(connect_timeout=connect_timeout, read_timeout=read_timeout)

    def source(self, node: str, upstream: UpstreamClient) -> UpstreamClient | None:
        """The replica ``node``'s download of a blob from ``upstream``, as the source type
        ``Fetch`` reads bodies from; None when ``node`` is not a URL to dial."""
        base = peer_url(node)
        if base is None:
            return None
        return cast(UpstreamClient, PeerSource(self, base, upstream))

    async def close(self) -> None:
        await self.wire.close()


class PeerSource:
    """One replica's download of blobs from one upstream, read over HTTP. It offers only
    what ``Fetch`` asks of a source."""

    def __init__(self, peers: Peers, base: str, upstream: UpstreamClient) -> None:
        self.name = PEER_NAME
        self.config = upstream.config  # the upstream's time-outs and stall window
        self._peers = peers
        self._base = base
        self._upstream = upstream.name

    @asynccontextmanager
    async def blob(
        self, repo: str, digest: str, offset: int = 0
    ) -> AsyncIterator[BlobStream | None]:
        path = PEER_PATH.format(upstream=quote(self._upstream, safe=""), digest=digest)
        headers = {"Authorization": self._peers.key.sign(self._upstream, digest)}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = await self._peers.wire.session.request("GET", self._base + path, headers=headers)
        except Exception as exc:  # refused, reset, time-out: the owner is gone or busy
            raise self.unavailable(exc) from None
        try:
            if resp.status not in (200, 206) or (offset and resp.status != 206):
                raise PeerLost(f"replica {self._base} answered {resp.status} for {digest}")
            length = resp.content_length
            yield BlobStream(resp, offset, None if length is None else offset + length)
        finally:
            resp.release()

    def unavailable(self, exc: BaseException) -> PeerLost:
        return PeerLost(f"replica {self._base} could not be read: {exc or type(exc).__name__}")
