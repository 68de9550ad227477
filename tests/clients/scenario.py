"""What every client test checks: digests the client reports, what the mirror's access log
shows it served, and that the upstream was really unreachable during the outage phase."""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Iterable, Sequence

from tests.support.clients import AccessEntry, AccessLogCursor, HubGuard
from tests.support.images import Index, PushedImage
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

HOST_ARCH = "amd64"


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
) -> list[AccessEntry]:
    """Assert the mirror served this phase's pulls of ``wanted``: each tag's manifest (GET or
    HEAD, 200), each index's host-platform child (200), every needed blob (``blobs``, by
    default the host platform's of all ``wanted``) with a 200 GET, all to ``user_agent``
    clients; and nothing answered 5xx. Returns the phase's entries."""
    needed = blobs if blobs is not None else set().union(*(platform_blobs(im) for im in wanted))
    entries = cursor.wait_for(lambda es: needed <= served_blobs(es), timeout=timeout)
    summary = "\n".join(str(e) for e in entries)
    ours = [e for e in entries if user_agent in e.user_agent]
    for image in wanted:
        tag_path = f"/v2/{image.repo}/manifests/{image.tag}"
        assert any(e.path == tag_path and e.status == 200 for e in ours), (
            f"{tag_path} not served 200 to {user_agent}:\n{summary}"
        )
        if image.is_index:
            child = f"/v2/{image.repo}/manifests/{platform_manifest(image)}"
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
