"""What every client test checks: digests the client reports, what the mirror's access log
shows it served, and that the upstream was really unreachable during the outage phase."""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.clients import AccessEntry, AccessLogCursor, HubGuard, PullResult
from tests.support.images import Index, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy
from tests.support.registry import Registry

HOST_ARCH = "amd64"

USER_AGENT = {
    "docker": "docker/",
    "containerd": "containerd/",
    "podman": "containers/",  # containers/image's own User-Agent
    "buildah": "Buildah/",  # buildah and skopeo set their own
    "skopeo": "skopeo/",
}
"""What each client's requests to the mirror carry in their User-Agent."""


@dataclass(frozen=True)
class Route:
    """How a client's requests for one registry's names look at the mirror: a path prefix
    after ``/v2/`` (``"ghcr.io/"``, from a path-prefixed registries.conf mirror) and/or a
    query (containerd's ``"ns=ghcr.io"``)."""

    prefix: str = ""
    query: str = ""

    def repo_path(self, repo: str) -> str:
        return f"/v2/{self.prefix}{repo}/"


@dataclass(frozen=True)
class SecondUpstream:
    """A second registry, mirrored as ``name`` next to docker.io, seen through its own
    recording ``proxy``, holding ``app`` (``org/app:v1``)."""

    name: str
    registry: Registry
    proxy: RecordingProxy
    app: PushedImage

    def mirror_config(self) -> dict[str, Any]:
        """The mirror config (merged over the default one) that adds this upstream."""
        return {"mirror": {"upstreams": [{"name": self.name, "remoteurl": self.proxy.url}]}}

    @property
    def app_ref(self) -> str:
        """``ghcr.io/org/app:v1``: the name a client pulls."""
        return f"{self.name}/{self.app.ref}"


def platform_manifest(image: PushedImage, arch: str = HOST_ARCH) -> str:
    """Digest of the manifest a client on ``arch`` pulls for ``image`` (the child of an
    index, else the image's own manifest)."""
    if isinstance(image.source, Index):
        return image.source.image_for(arch).manifest_digest
    return image.digest


def platform_blobs(image: PushedImage, arch: str = HOST_ARCH) -> set[str]:
    """Config + layer digests a client on ``arch`` needs for ``image``."""
    if isinstance(image.source, Index):
        return set(image.source.image_for(arch).blob_digests)
    return set(image.blob_digests)


def _blob_digest(entry: AccessEntry) -> str | None:
    if entry.method == "GET" and entry.status == 200 and "/blobs/sha256:" in entry.path:
        return entry.path.rsplit("/", 1)[1]
    return None


def served_blobs(entries: Iterable[AccessEntry]) -> set[str]:
    return {d for e in entries if (d := _blob_digest(e))}


def check_served(
    cursor: AccessLogCursor,
    wanted: Sequence[PushedImage],
    *,
    user_agent: str,
    blobs: set[str] | None = None,
    timeout: float = 5.0,
    route: Route = Route(),
) -> list[AccessEntry]:
    """Assert the mirror served this phase's pulls of ``wanted``: each tag's manifest (GET or
    HEAD, 200), each index's host-platform child (200), every needed blob (``blobs``, by
    default the host platform's of all ``wanted``) with a 200 GET, all to ``user_agent``
    clients; and nothing answered 5xx. Manifest paths are ``route``'s (a path prefix for a
    second upstream). Returns the phase's entries."""
    needed = blobs if blobs is not None else set().union(*(platform_blobs(im) for im in wanted))
    entries = cursor.wait_for(lambda es: needed <= served_blobs(es), timeout=timeout)
    summary = "\n".join(str(e) for e in entries)
    ours = [e for e in entries if user_agent in e.user_agent]
    for image in wanted:
        tag_path = f"{route.repo_path(image.repo)}manifests/{image.tag}"
        assert any(e.path == tag_path and e.status == 200 for e in ours), (
            f"{tag_path} not served 200 to {user_agent}:\n{summary}"
        )
        if image.is_index:
            child = f"{route.repo_path(image.repo)}manifests/{platform_manifest(image)}"
            assert any(e.path == child and e.status == 200 for e in ours), (
                f"{child} not served 200:\n{summary}"
            )
    for entry in entries:
        if (digest := _blob_digest(entry)) in needed:
            assert user_agent in entry.user_agent, f"blob {digest} served to another client"
    assert not [e for e in entries if e.status >= 500], f"5xx from the mirror:\n{summary}"
    return entries


def describe(entries: Iterable[AccessEntry]) -> str:
    """``METHOD kind status xN`` counts, for the test output (run with ``-s`` to see)."""
    counts: Counter[str] = Counter()
    for e in entries:
        kind = "blob" if "/blobs/" in e.path else "manifest" if "/manifests/" in e.path else e.path
        query = "?" + e.query.split("=")[0] + "=" if e.query else ""
        counts[f"{e.method} {kind}{query} {e.status}"] += 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def assert_upstream_down(upstream_proxy: RecordingProxy) -> None:
    """The mirror's upstream address refuses connections (the outage is real)."""
    try:
        http_request("GET", f"{upstream_proxy.url}/v2/", timeout=2)
    except (OSError, http.client.HTTPException):
        return
    raise AssertionError(f"upstream {upstream_proxy.url} still answers")


def assert_no_fallback(hub_guard: HubGuard) -> None:
    """No client tried to reach a registry other than the mirror."""
    assert hub_guard.attempts == [], f"clients tried to go around the mirror: {hub_guard.attempts}"


def assert_routed(entries: Iterable[AccessEntry], image: PushedImage, route: Route) -> None:
    """Every request for ``image``'s repository came the way ``route`` says (path prefix,
    query) and was answered 200; there was at least one."""
    mine = [e for e in entries if f"/{image.repo}/" in e.path]
    summary = "\n".join(str(e) for e in mine)
    assert mine, f"no request for {image.repo}"
    for e in mine:
        assert e.path.startswith(route.repo_path(image.repo)), f"not via {route}:\n{summary}"
        assert e.query == route.query, f"not via {route}:\n{summary}"
        assert e.status == 200, f"not answered 200:\n{summary}"


def pull_second_upstream_then_from_cache(
    pull_fresh: Callable[[str], PullResult],
    *,
    second: SecondUpstream,
    route: Route,
    user_agent: str,
    mirror: MirrorProcess,
    hub: RecordingProxy,
    hub_guard: HubGuard,
    label: str,
) -> None:
    """The second-upstream scenario every client but Docker runs: ``pull_fresh(ref)`` (a new
    client store on every call) pulls ``second.app_ref`` through the mirror, which answers
    each request 200, routed by ``route``, fetching from the second upstream while the
    docker.io one (``hub``) hears nothing; then, with the second upstream's proxy stopped,
    again, now from the mirror's cache; and nothing ever tried to go around the mirror."""
    app = second.app
    cursor = AccessLogCursor(mirror)
    assert pull_fresh(second.app_ref).digest == app.digest
    first = check_served(cursor, [app], user_agent=user_agent, route=route)
    assert_routed(first, app, route)
    print(f"{label}, {second.name} first pull:", describe(first))
    assert second.proxy.count(path_contains=f"/v2/{app.repo}/manifests/{app.tag}") >= 1
    fetched = {x.path.rsplit("/", 1)[1] for x in second.proxy.blob_gets()}
    assert app.blob_digests <= fetched, second.proxy.requests()
    assert hub.requests() == [], "the docker.io upstream was asked"

    second.proxy.stop()
    assert_upstream_down(second.proxy)
    cursor.reset()
    assert pull_fresh(second.app_ref).digest == app.digest
    cached = check_served(cursor, [app], user_agent=user_agent, route=route)
    assert_routed(cached, app, route)
    print(f"{label}, {second.name} down:", describe(cached))
    assert hub.requests() == [], "the docker.io upstream was asked"
    assert_no_fallback(hub_guard)
