"""Blob fetches in flight, for the status page: only those the viewer may pull."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pullthrough.mirror.service import Mirror


def fetches(mirror: Mirror, *, may_pull: Callable[[str, str], bool]) -> list[dict[str, Any]]:
    """Each running fetch: what, from where, for which repository, how far, how fast."""
    out = []
    for fetch in mirror.fetches.running():
        if not may_pull(fetch.upstream.name, fetch.repo):
            continue
        out.append(
            {
                "upstream": fetch.upstream.name,
                "repository": fetch.repo,
                "digest": str(fetch.digest),
                "bytes": fetch.written,
                "size": fetch.size,
                "bytes_per_second": round(fetch.rate()),
                "clients": fetch.readers,
            }
        )
    out.sort(key=lambda f: (f["upstream"], f["repository"], f["digest"]))
    return out
