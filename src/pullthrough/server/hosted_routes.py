"""The registry API for hosted repositories: pull, push, delete and referrers.

``routes.dispatch`` sends a request here when its name is hosted (``mirror.hosted``);
everything else about it (name validation, OCI error bodies) is as for mirrored names.
Pushing, mounting and deleting need their own grant (``push``, ``delete``): a token scope
with that action, or a ``mirror.access`` rule naming it. Nobody pushes by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from pullthrough.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    Denied,
    NotFound,
    RangeInvalid,
    RegistryError,
    SizeInvalid,
    StoredBlobCorrupt,
    Unauthorized,
    Unsupported,
)
from pullthrough.hosted.registry import HostedRegistry
from pullthrough.hosted.uploads import Session, Uploads
from pullthrough.manifest import OCI_INDEX
from pullthrough.mirror.listing import page
from pullthrough.reference import Digest, is_digest, parse_digest, validate_name, validate_tag
from pullthrough.server.forwarding import FORWARDER_KEY
from pullthrough.server.transfer import send_blob
from pullthrough.server.verification import VERIFY_KEY

HOSTED_KEY = web.AppKey("hosted", HostedRegistry)
UPLOADS_KEY = web.AppKey("uploads", Uploads)

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
READ = ("pull",)
WRITE = ("pull", "push")
_RANGE = re.compile(r"^(?:bytes[= ])?(\d{1,18})-(\d{1,18})$")
_SESSION = re.compile(r"^/v2/.+/blobs/uploads/(?P<id>[^/]*)$")

_AUTHORIZE = "pullthrough.hosted.authorize"
_WRITE_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:blobs/uploads(?:/.*)?|manifests/[^/]*)$")

Authorize = Callable[[web.Request, str, str, tuple[str, ...]], Awaitable[str | None]]


def is_hosted_write(request: web.Request, hosted: HostedRegistry) -> bool:
    """A push to a hosted repository: its body is a blob or manifest, not limited by
    ``mirror.limits.max_body_size`` (manifests have a limit of their own)."""
    if request.method not in ("POST", "PATCH", "PUT"):
        return False
    match = _WRITE_PATH.match(request.rel_url.raw_path)
    return match is not None and hosted.holds(match["name"])


async def dispatch(
    request: web.Request, kind: str, name: str, authorize: Authorize
) -> web.StreamResponse:
    """Handle a request for the hosted repository ``name`` (already known to be hosted)."""
    repo = validate_name(name)
    method = request.method
    if method in ("GET", "HEAD"):
        actions: tuple[str, ...] = READ
    elif method == "DELETE" and kind in ("manifest", "blob"):
        actions = ("delete",)
    elif kind in ("upload", "manifest") and method in ("POST", "PATCH", "PUT", "DELETE"):
        actions = WRITE
    else:
        raise Unsupported(f"{method} is not supported here")
    await authorize(request, kind, repo, actions)
    request[_AUTHORIZE] = authorize
    handler = _HANDLERS.get((kind, method if method != "HEAD" else "GET"))
    if handler is None:
        raise Unsupported(f"{method} is not supported on this endpoint")
    return await handler(request, repo)


# --- pulls ------------------------------------------------------------------------------


async def get_manifest(request: web.Request, repo: str) -> web.StreamResponse:
    hosted = request.app[HOSTED_KEY]
    ref = _reference(request)
    record, body = await hosted.manifest(repo, ref)
    headers = {
        **API_HEADERS,
        "Content-Type": record.media_type,
        "Docker-Content-Digest": record.digest,
        "ETag": f'"{record.digest}"',
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return web.Response(headers=headers)
    return web.Response(body=body, headers=headers)


async def get_blob(request: web.Request, repo: str) -> web.StreamResponse:
    hosted = request.app[HOSTED_KEY]
    digest = parse_digest(request.match_info.get("digest") or _tail(request, "/blobs/"))
    headers = {
        **API_HEADERS,
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(await hosted.blob_size(repo, digest))
        return web.Response(headers=headers)
    # The same read as a cached blob's: sent unhashed (sendfile) while the file is as it
    # was verified, hashed as it goes otherwise, the last byte only if it matches.
    verification = request.app[VERIFY_KEY]
    body = await hosted.open_blob(repo, digest)
    try:
        return await send_blob(request, body, headers, verification.metrics, verification)
    except StoredBlobCorrupt:
        # Checked whole before any header went out, and removed: there is no upstream to
        # fetch it from, so the repository no longer holds it until it is pushed again.
        raise BlobUnknown(
            f"blob {digest} of repository {repo} no longer matched its digest on disk and "
            "was removed; push it again",
            detail={"digest": str(digest)},
        ) from None


async def get_tags(request: web.Request, repo: str) -> web.StreamResponse:
    hosted = request.app[HOSTED_KEY]
    tags = await hosted.tags(repo)
    raw_n = request.query.get("n")
    n = int(raw_n) if raw_n and raw_n.isascii() and raw_n.isdigit() and len(raw_n) < 7 else None
    found = page(tags, n, request.query.get("last") or None)
    headers = dict(API_HEADERS)
    if found.more and found.items:
        url = request.rel_url.with_query({"n": str(n), "last": found.items[-1]})
        headers["Link"] = f'<{url}>; rel="next"'
    doc = {"name": repo, "tags": found.items}
    return web.json_response(doc, headers=headers)


async def get_referrers(request: web.Request, repo: str) -> web.StreamResponse:
    hosted = request.app[HOSTED_KEY]
    subject = parse_digest(_tail(request, "/referrers/"))
    artifact_type = request.query.get("artifactType") or None
    found = await hosted.referrers(repo, subject, artifact_type)
    headers = {**API_HEADERS, "Content-Type": OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    return web.Response(body=json.dumps(doc).encode(), headers=headers)


# --- pushes -----------------------------------------------------------------------------


async def start_upload(request: web.Request, repo: str) -> web.StreamResponse:
    hosted, uploads = request.app[HOSTED_KEY], request.app[UPLOADS_KEY]
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount and source:
        digest = parse_digest(mount)
        if await _may_read(request, source) and await hosted.mount(repo, digest, source):
            return _created(repo, digest)
        # Not mountable: a plain upload session, as the spec says.
    session = await uploads.start(repo, request.remote or "")
    digest_text = request.query.get("digest")
    if digest_text:
        # Monolithic: the whole blob in this request.
        digest = parse_digest(digest_text)
        return await _finish(request, repo, session, digest, monolithic=True)
    return web.Response(status=202, headers={**API_HEADERS, **uploads.progress_headers(session)})


async def patch_upload(request: web.Request, repo: str) -> web.StreamResponse:
    uploads = request.app[UPLOADS_KEY]
    session_id = _session_id(request)
    if (elsewhere := await _held_elsewhere(request, repo, session_id)) is not None:
        return elsewhere
    async with uploads.lock(session_id):
        session = await uploads.get(repo, session_id)
        start, length = _content_range(request)
        session = await uploads.append(session, _body(request), start=start, length=length)
    return web.Response(status=202, headers={**API_HEADERS, **uploads.progress_headers(session)})


async def put_upload(request: web.Request, repo: str) -> web.StreamResponse:
    uploads = request.app[UPLOADS_KEY]
    digest = parse_digest(request.query.get("digest") or "")
    session_id = _session_id(request)
    if (elsewhere := await _held_elsewhere(request, repo, session_id)) is not None:
        return elsewhere
    async with uploads.lock(session_id):
        session = await uploads.get(repo, session_id)
        return await _finish(request, repo, session, digest, monolithic=False)


async def upload_status(request: web.Request, repo: str) -> web.StreamResponse:
    uploads = request.app[UPLOADS_KEY]
    if (elsewhere := await _held_elsewhere(request, repo, _session_id(request))) is not None:
        return elsewhere
    session = await uploads.get(repo, _session_id(request))
    return web.Response(status=204, headers={**API_HEADERS, **uploads.progress_headers(session)})


async def cancel_upload(request: web.Request, repo: str) -> web.StreamResponse:
    uploads = request.app[UPLOADS_KEY]
    if (elsewhere := await _held_elsewhere(request, repo, _session_id(request))) is not None:
        return elsewhere
    session = await uploads.get(repo, _session_id(request))
    await uploads.cancel(session.id)
    return web.Response(status=204, headers=API_HEADERS)


async def put_manifest(request: web.Request, repo: str) -> web.StreamResponse:
    hosted = request.app[HOSTED_KEY]
    ref = _reference(request)
    limit = hosted.config.max_manifest_size
    if request.content_length is not None and request.content_length > limit:
        raise SizeInvalid(
            f"the manifest is {request.content_length} bytes; this registry takes at most "
            f"{limit} (mirror.hosted.max_manifest_size)"
        )
    body = await _read_capped(request, limit)
    pushed = await hosted.put_manifest(repo, ref, body, request.headers.get("Content-Type"))
    headers = {
        **API_HEADERS,
        "Location": f"/v2/{repo}/manifests/{pushed.digest}",
        "Docker-Content-Digest": pushed.digest,
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request, repo: str) -> web.StreamResponse:
    await request.app[HOSTED_KEY].delete_manifest(repo, _reference(request))
    return web.Response(status=202, headers=API_HEADERS)


async def delete_blob(request: web.Request, repo: str) -> web.StreamResponse:
    digest = parse_digest(_tail(request, "/blobs/"))
    await request.app[HOSTED_KEY].delete_blob(repo, digest)
    return web.Response(status=202, headers=API_HEADERS)


# --- helpers ----------------------------------------------------------------------------


async def _held_elsewhere(
    request: web.Request, repo: str, session_id: str
) -> web.StreamResponse | None:
    """Replicas on a bucket: another replica's answer to a request for a session it
    holds (the bytes are on its disk); None when the session is this replica's, or no
    replica's (then the caller answers BLOB_UPLOAD_UNKNOWN as always)."""
    forwarder = request.app.get(FORWARDER_KEY)
    if forwarder is None:
        return None
    try:
        await request.app[UPLOADS_KEY].get(repo, session_id)
        return None
    except BlobUploadUnknown:
        return await forwarder.forward(request, session_id)


async def _finish(
    request: web.Request, repo: str, session: Session, digest: Digest, *, monolithic: bool
) -> web.StreamResponse:
    hosted, uploads = request.app[HOSTED_KEY], request.app[UPLOADS_KEY]
    try:
        start, length = _content_range(request)
        session = await uploads.append(session, _body(request), start=start, length=length)
    except BaseException:
        # A chunk out of order or cut short leaves a session as it was: the client may
        # send it again. A monolithic upload's session was made for this request only:
        # however it failed (an OCI error, the client gone), it goes, and with it the
        # place it held under mirror.hosted.max_uploads_per_client.
        if monolithic:
            await uploads.cancel(session.id)
        raise
    async def record(size: int) -> None:
        await hosted.blob_pushed(repo, digest, size)

    await uploads.finish(session, digest, record)
    return _created(repo, digest)


def _created(repo: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            **API_HEADERS,
            "Location": f"/v2/{repo}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
        },
    )


async def _may_read(request: web.Request, source: str) -> bool:
    """Whether the pusher may pull ``source`` (a mount must not read what it may not)."""
    hosted = request.app[HOSTED_KEY]
    try:
        repo = validate_name(source)
    except RegistryError:
        return False
    if not hosted.holds(repo):
        return False
    authorize: Authorize = request[_AUTHORIZE]
    try:
        await authorize(request, "blob", repo, READ)
    except (Unauthorized, Denied):
        return False
    return True


def _content_range(request: web.Request) -> tuple[int | None, int | None]:
    """(start, length) from ``Content-Range`` and ``Content-Length``; a malformed or
    inconsistent range is 416."""
    length = request.content_length
    header = request.headers.get("Content-Range")
    if header is None:
        return None, length
    match = _RANGE.match(header.strip())
    if match is None:
        raise RangeInvalid(f"Content-Range {header[:100]!r} is not <start>-<end>")
    start, end = int(match[1]), int(match[2])
    if end < start or (length is not None and end - start + 1 != length):
        raise RangeInvalid(f"Content-Range {header[:100]!r} does not match the body's length")
    return start, end - start + 1


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(256 * 1024):
        yield chunk


async def _read_capped(request: web.Request, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise SizeInvalid(
                f"the manifest is over {limit} bytes (mirror.hosted.max_manifest_size)",
                headers={"Connection": "close"},
            )
        parts.append(chunk)
    return b"".join(parts)


def _reference(request: web.Request) -> str:
    ref = _tail(request, "/manifests/")
    if is_digest(ref):
        return str(parse_digest(ref))
    return validate_tag(ref)


def _session_id(request: web.Request) -> str:
    match = _SESSION.match(request.rel_url.raw_path)
    if match is None:
        raise NotFound("no upload session named in the path")
    return match["id"]


def _tail(request: web.Request, marker: str) -> str:
    path = request.rel_url.raw_path
    return path[path.rindex(marker) + len(marker) :]


_HANDLERS: dict[tuple[str, str], Callable[[web.Request, str], Awaitable[web.StreamResponse]]] = {
    ("manifest", "GET"): get_manifest,
    ("manifest", "PUT"): put_manifest,
    ("manifest", "DELETE"): delete_manifest,
    ("blob", "GET"): get_blob,
    ("blob", "DELETE"): delete_blob,
    ("tags", "GET"): get_tags,
    ("referrers", "GET"): get_referrers,
    ("upload", "POST"): start_upload,
    ("upload", "PATCH"): patch_upload,
    ("upload", "PUT"): put_upload,
    ("upload", "GET"): upload_status,
    ("upload", "DELETE"): cancel_upload,
}
