"""The route replicas on one bucket read each other's downloads through
(``cluster.peers``): ``GET /_pullthrough/peer/blobs/<upstream>/<digest>``, signed with
``mirror.cluster.secret``. It exists only with ``storage.s3``, a cluster and a secret."""

from __future__ import annotations

from aiohttp import web

from pullthrough.cluster.peers import PEER_PATH, PeerKey
from pullthrough.errors import Unauthorized
from pullthrough.reference import parse_digest
from pullthrough.server.routes import KIND_KEY, MIRROR_KEY
from pullthrough.server.transfer import send_blob

PEER_KEY = web.AppKey("peer_key", PeerKey)


def add_routes(app: web.Application, key: PeerKey) -> None:
    app[PEER_KEY] = key
    app.router.add_get(PEER_PATH, peer_blob, allow_head=False)


async def peer_blob(request: web.Request) -> web.StreamResponse:
    """Another replica's read of this one's download: the signature first (a client
    without the secret learns nothing, not even whether the digest is here), then the
    running fetch or the local copy, sent as to a client (Range included)."""
    request[KIND_KEY] = "peer_blob"
    upstream = request.match_info["upstream"]
    text = request.match_info["digest"]
    if not request.app[PEER_KEY].verify(request.headers.get("Authorization"), upstream, text):
        raise Unauthorized("peer requests must be signed with mirror.cluster.secret")
    digest = parse_digest(text)
    mirror = request.app[MIRROR_KEY]
    body = await mirror.blobs.for_peer(upstream, digest)
    headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": str(digest)}
    return await send_blob(request, body, headers, mirror.metrics)
