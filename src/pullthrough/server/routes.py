"""The registry API's pull side: every ``/v2/`` request is parsed and dispatched here.

Repository names contain slashes, so the path is matched by suffix (``/manifests/<ref>``,
``/blobs/<digest>``, ``/tags/list``) rather than by aiohttp's router; the name and the
reference are validated before anything reaches the mirror.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from pullthrough.clientauth.access import AccessRules
from pullthrough.errors import (
    Denied,
    NameUnknown,
    NotFound,
    PaginationInvalid,
    RegistryError,
    StoredBlobCorrupt,
    Unsupported,
)
from pullthrough.manifest import OCI_INDEX, parse_accept
from pullthrough.mirror.listing import Page
from pullthrough.mirror.route import Route
from pullthrough.mirror.service import Mirror
from pullthrough.reference import Digest, is_digest, parse_digest, validate_tag
from pullthrough.server import hosted_routes
from pullthrough.server.auth import ClientAuth
from pullthrough.server.routing import route, target
from pullthrough.server.transfer import send_blob
from pullthrough.server.verification import VERIFY_KEY, ReadVerification
from pullthrough.upstream.client import UpstreamClient

MIRROR_KEY = web.AppKey("mirror", Mirror)
KIND_KEY = "pullthrough.kind"  # the route a request took, for metrics
AUTH_KEY = web.AppKey("auth", ClientAuth)
ACCESS_KEY = web.AppKey("access", AccessRules)
USER_KEY = "pullthrough.user"  # who authorize() said the client is (None: anonymous)
ROUTE_KEY = "pullthrough.route"  # the resolved (upstream, repository) of a named request

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
READ_METHODS = ("GET", "HEAD")
MAX_PAGE = 10_000

_ROUTES = [
    ("base", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog/?$")),
    ("upload", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads(?:/.*)?$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]*)$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list/?$")),
    ("referrers", re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]*)$")),
]


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Match the path, refuse writes, and hand the request to the right handler."""
    path = request.rel_url.raw_path
    for kind, pattern in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        name = match.groupdict().get("name")
        if name is not None and _hosted(request, name):
            request[KIND_KEY] = kind
            return await hosted_routes.dispatch(request, kind, name, _authorize_hosted)
        if request.method not in READ_METHODS or kind == "upload":
            raise Unsupported(
                f"{request.method} is not supported: pullthrough is a read-only mirror",
                headers={"Allow": "GET, HEAD"},
            )
        request[KIND_KEY] = kind
        params = match.groupdict()
        request[USER_KEY] = await _authorize(request, kind, params)
        handler = _HANDLERS[kind]
        return await handler(request, params)
    raise NotFound(f"no such endpoint: {path[:200]}")


def _hosted(request: web.Request, name: str) -> bool:
    """Whether ``name`` is a hosted repository's: listed in ``mirror.hosted`` and not
    addressed to another registry with ``?ns=`` (a name is hosted or mirrored, never
    both)."""
    hosted = request.app[MIRROR_KEY].hosted
    if hosted is None or not hosted.holds(name):
        return False
    ns = request.query.get("ns")
    return ns is None or ns == request.app[MIRROR_KEY].config.default_upstream


async def _authorize_hosted(
    request: web.Request, kind: str, repo: str, actions: tuple[str, ...]
) -> str | None:
    """Who the client is, once ``auth:`` and ``mirror.access`` let it do ``actions`` on
    the hosted ``repo``. With ``auth.token`` the token's scope decides; otherwise pulls
    follow ``mirror.access`` as for mirrored names, and a push or delete needs a rule that
    names it (never granted by the absence of rules)."""
    mirror = request.app[MIRROR_KEY]
    user = await request.app[AUTH_KEY].authorize(request, kind, repo, actions)
    request[USER_KEY] = user
    if mirror.config.auth is not None and mirror.config.auth.kind == "token":
        return user
    access, registry = request.app[ACCESS_KEY], mirror.config.default_upstream
    for action in actions:
        if action == "pull":
            allowed = access.allows(user, registry, repo)
        else:
            allowed = access.grants(user, registry, repo, action)
        if not allowed:
            who = f"user {user}" if user is not None else "an anonymous client"
            raise Denied(
                f"requested access to the resource is denied: {who} may not {action} {repo} "
                "(mirror.access)",
                detail={"name": repo},
            )
    return user


async def _authorize(request: web.Request, kind: str, params: dict[str, str]) -> str | None:
    """Who the client is, once ``auth:`` and ``mirror.access`` let it at the request's
    target. A named request is decided on the resolved (upstream, repository), after
    ``?ns=``, path prefixes and Docker Hub's ``library/``, so that a grant for ``acme/app``
    on the default upstream does not read another upstream's ``acme/app`` through
    ``?ns=``. An ad-hoc upstream's slot is taken only after both said yes."""
    auth = request.app[AUTH_KEY]
    name = params.get("name")
    if name is None:
        return await auth.authorize(request, kind, None)
    mirror = request.app[MIRROR_KEY]
    try:
        found = target(mirror, name, request.query.get("ns"))
    except RegistryError:
        # Say nothing about names and upstreams to a client that may not ask at all.
        await auth.authorize(request, kind, name)
        raise
    user = await auth.authorize(request, kind, found.scope)
    if not request.app[ACCESS_KEY].allows(user, found.upstream.name, found.repo):
        who = f"user {user}" if user is not None else "an anonymous client"
        raise Denied(
            f"requested access to the resource is denied: {who} may not pull "
            f"{found.upstream.name}/{found.repo} (mirror.access)",
            detail={"name": name},
        )
    # The operator's mirror.policy, before any slot, store read or upstream request.
    await _permit(mirror, kind, params, found.upstream.name, found.repo, name)
    # Only now may an ad-hoc upstream take a slot: a client that may not pull never does.
    request[ROUTE_KEY] = route(mirror, found)
    return user


async def _permit(
    mirror: Mirror, kind: str, params: dict[str, str], upstream: str, repo: str, name: str
) -> None:
    """Raises Denied when ``mirror.policy`` does not let the request's target be mirrored."""
    if not mirror.policy.active:
        return
    if kind == "manifest":
        ref = params["ref"]
        if is_digest(ref):
            digest = str(parse_digest(ref))
            await mirror.permit(upstream, repo, name, digest=digest)
        else:
            await mirror.permit(upstream, repo, name, tag=validate_tag(ref))
        return
    await mirror.permit(upstream, repo, name)


async def base(request: web.Request, _: dict[str, str]) -> web.StreamResponse:
    return web.json_response({}, headers=API_HEADERS)


async def manifest(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    upstream, repo = _route(request, params)
    ref = params["ref"]
    tag: str | None = None
    if is_digest(ref):
        found = await mirror.manifests.by_digest(upstream, repo, parse_digest(ref))
    else:
        tag = validate_tag(ref)
        accept = parse_accept(request.headers.getall("Accept", []))
        found = await mirror.manifests.by_tag(upstream, repo, tag, accept)
    headers = {
        **API_HEADERS,
        "OCI-Namespace": upstream.name,
        "Content-Type": found.media_type,
        "Docker-Content-Digest": found.digest,
        "ETag": f'"{found.digest}"',
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(found.body))
        return web.Response(headers=headers)
    # A pull, as registries count them: a manifest GET answered (HEADs only ask).
    mirror.index.pulled(upstream.name, repo, tag)
    return web.Response(body=found.body, headers=headers)


async def blob(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    upstream, repo = _route(request, params)
    digest = parse_digest(params["digest"])
    headers = {
        **API_HEADERS,
        "OCI-Namespace": upstream.name,
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
    }
    if request.method == "HEAD":
        size = await mirror.blobs.head(upstream, repo, digest)
        if size is not None:
            headers["Content-Length"] = str(size)
        return web.Response(headers=headers)
    verification = request.app[VERIFY_KEY]
    try:
        return await _send_blob(request, upstream, repo, digest, headers, verification)
    except StoredBlobCorrupt:
        # The stored copy failed its check before any header went out and was removed:
        # asking again fetches it from the upstream for this very request (once).
        return await _send_blob(request, upstream, repo, digest, headers, verification)


async def _send_blob(
    request: web.Request,
    upstream: UpstreamClient,
    repo: str,
    digest: Digest,
    headers: dict[str, str],
    verification: ReadVerification,
) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    body = await mirror.blobs.get(upstream, repo, digest)
    return await send_blob(request, body, headers, mirror.metrics, verification)


async def tags(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    upstream, repo = _route(request, params)
    n, last = _paging(request)
    policy = mirror.policy
    # A tag the policy refuses is not listed: a client (or a sync) would only be refused it.
    keep = (lambda tag: policy.tag_allowed(upstream.name, repo, tag)) if policy.active else None
    found = await mirror.listing.tags(upstream, repo, n, last, keep)
    return _page_response(request, {"name": params["name"], "tags": found.items}, found, n)


async def catalog(request: web.Request, _: dict[str, str]) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    n, last = _paging(request)
    ns = request.query.get("ns")
    access, user = request.app[ACCESS_KEY], request[USER_KEY]
    if ns is not None:
        only = mirror.upstreams.for_namespace(ns)
        if only is None:
            raise NameUnknown(mirror.upstreams.how_to_add(ns), detail={"ns": ns[:200]})
        sources = [(only, "")]
    else:
        sources = [
            (u, "" if u is mirror.upstreams.default else f"{u.name}/") for u in mirror.upstreams
        ]

    # Only what this client may pull: a catalog must not name repositories it may not see,
    # nor ones mirror.policy no longer lets be mirrored (still in the store until evicted).
    policy = mirror.policy

    def visible(registry: str, repo: str) -> bool:
        return access.allows(user, registry, repo) and policy.repository_allowed(registry, repo)

    # Hosted repositories are the default registry's names (no ?ns=, or ?ns= naming it),
    # listed for a client that may pull them, as a pull of them is decided.
    hosted: list[str] = []
    if mirror.hosted is not None and (ns is None or ns == mirror.config.default_upstream):
        registry = mirror.config.default_upstream
        hosted = [
            name
            for name in await mirror.hosted.repositories()
            if not access.active or access.allows(user, registry, name)
        ]
    found = await mirror.listing.catalog(
        sources, n, last, visible if access.active or policy.active else None, hosted=hosted
    )
    return _page_response(request, {"repositories": found.items}, found, n)


def _route(request: web.Request, params: dict[str, str]) -> tuple[UpstreamClient, str]:
    """The upstream and repository a request names, as ``_authorize`` resolved them once
    ``auth:`` and ``mirror.access`` let the client pull there (decided on the resolved
    name, however the client addressed it)."""
    found: Route = request[ROUTE_KEY]
    return found.upstream, found.repo


def _paging(request: web.Request) -> tuple[int | None, str | None]:
    raw_n = request.query.get("n")
    n: int | None = None
    if raw_n not in (None, ""):
        if not (raw_n.isascii() and raw_n.isdigit()) or len(raw_n) > 9:
            raise PaginationInvalid(f"n must be a whole number from 0 to {MAX_PAGE}, got {raw_n!r}")
        n = min(int(raw_n), MAX_PAGE)
    last = request.query.get("last") or None
    if last is not None and len(last) > 512:
        raise PaginationInvalid("last is too long")
    return n, last


def _page_response(
    request: web.Request, doc: dict[str, object], found: Page, n: int | None
) -> web.StreamResponse:
    headers = dict(API_HEADERS)
    if found.more and found.items:
        # Every other parameter (``ns`` above all) is kept: without it the next page
        # would be listed from the default upstream.
        query = [(k, v) for k, v in request.query.items() if k not in ("n", "last")]
        query.append(("last", found.items[-1]))
        if n is not None:
            query.append(("n", str(n)))
        url = request.rel_url.with_query(query)
        headers["Link"] = f'<{url}>; rel="next"'
    return web.Response(
        body=json.dumps(doc).encode(), content_type="application/json", headers=headers
    )


async def referrers(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    upstream, repo = _route(request, params)
    subject = parse_digest(params["digest"])
    artifact_type = request.query.get("artifactType") or None

    async def permit_tag(tag: str) -> None:
        # The tag scheme's fallback reads a tag: mirror.policy's tag rules apply to it.
        await mirror.permit(upstream.name, repo, params["name"], tag=tag)

    found = await mirror.referrers.referrers(
        upstream, repo, subject, artifact_type, permit_tag=permit_tag
    )
    headers = {**API_HEADERS, "OCI-Namespace": upstream.name, "Content-Type": OCI_INDEX}
    if found.filtered:
        headers["OCI-Filters-Applied"] = "artifactType"
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(found.descriptors)}
    return web.Response(body=json.dumps(doc).encode(), headers=headers)


_HANDLERS = {
    "base": base,
    "referrers": referrers,
    "catalog": catalog,
    "manifest": manifest,
    "blob": blob,
    "tags": tags,
}
