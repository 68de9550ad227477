"""Requests for a hosted upload session that another replica holds are sent on to it
(replicas on a bucket: ``cluster.upload_owners``), and its answer back to the client.

The client's own credentials go with the request: the replica holding the session
authenticates and authorizes it exactly as if the client had reached it (this replica has
done the same already). A forwarded request carries ``Pullthrough-Forwarded`` and is never
forwarded again. Only the headers the upload API uses are passed either way, and the
answer's body is read up to a small cap (these answers are empty or an error).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import ClientError, web

from pullthrough.errors import BlobUploadUnknown

if TYPE_CHECKING:  # replicas on a bucket only (it loads the redis client)
    from pullthrough.cluster.upload_owners import UploadOwners

log = logging.getLogger(__name__)

FORWARDED = "Pullthrough-Forwarded"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # as hosted.uploads makes them
_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Content-Range",
    "Content-Length",
    "User-Agent",
)
_ANSWER_HEADERS = (
    "Location",
    "Range",
    "Docker-Upload-UUID",
    "Docker-Content-Digest",
    "Docker-Distribution-API-Version",
    "Content-Type",
    "Retry-After",
    "WWW-Authenticate",
)
# Replicas are on one network; the owner answers the end of an upload once it has hashed
# the blob and put it into the bucket (seconds for a large layer).
FORWARD_CONNECT_TIMEOUT = 2.0
FORWARD_READ_TIMEOUT = 300.0
_ANSWER_CAP = 64 * 1024
_CHUNK = 256 * 1024


class UploadForwarder:
    def __init__(self, owners: UploadOwners) -> None:
        self.owners = owners
        # aiohttp's client (it sends request bodies, which the download wire does not);
        # made on first use, inside the running loop. Replicas are the operator's own
        # addresses: no outbound policy, as for the bucket.
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    connect=FORWARD_CONNECT_TIMEOUT, sock_read=FORWARD_READ_TIMEOUT
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def forward(self, request: web.Request, session_id: str) -> web.Response | None:
        """The owner's answer to ``request``, or None when no other replica holds
        ``session_id`` (or the request was forwarded to this one already)."""
        if FORWARDED in request.headers or not _SESSION_ID.fullmatch(session_id):
            return None  # forwarded once already, or no id this registry makes
        base = await self.owners.owner(session_id)
        if base is None:
            return None
        headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
        headers[FORWARDED] = "1"
        body = request.content.iter_chunked(_CHUNK) if request.body_exists else None
        try:
            async with self.session.request(
                request.method, base + request.rel_url.path_qs, headers=headers, data=body
            ) as resp:
                answer = await resp.content.read(_ANSWER_CAP)
                kept = {h: resp.headers[h] for h in _ANSWER_HEADERS if h in resp.headers}
                return web.Response(status=resp.status, headers=kept, body=answer)
        except (ClientError, OSError, TimeoutError) as exc:
            log.warning(
                "upload session %s is held by %s, which did not answer: %s", session_id, base, exc
            )
            raise BlobUploadUnknown(
                "the replica holding this upload session cannot be reached; start the upload again",
                detail={"uuid": session_id},
            ) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


FORWARDER_KEY = web.AppKey("upload_forwarder", UploadForwarder)
