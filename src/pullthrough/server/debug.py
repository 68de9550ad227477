"""Distribution's debug server: ``/debug/health`` and, when enabled, Prometheus metrics.

It listens on ``http.debug.addr``, apart from the registry port, so that operators can
scrape and probe it without exposing it to clients.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from aiohttp import web

from pullthrough.mirror.service import Mirror

MIRROR = web.AppKey("debug_mirror", Mirror)


def build_debug_app(mirror: Mirror, metrics_path: str | None) -> web.Application:
    app = web.Application()
    app[MIRROR] = mirror
    app.router.add_get("/debug/health", health)
    if metrics_path:
        app.router.add_get(metrics_path, metrics)
    return app


async def metrics(request: web.Request) -> web.Response:
    body = request.app[MIRROR].metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def health(request: web.Request) -> web.Response:
    """200 with every check's state; 503 when the store cannot be written or the index
    cannot be read (a mirror that cannot cache should leave the load balancer)."""
    mirror = request.app[MIRROR]
    checks: dict[str, Any] = {}
    storage_ok, storage_detail = await asyncio.to_thread(_storage_writable, mirror)
    checks["storage"] = {"ok": storage_ok, "detail": storage_detail}
    try:
        await mirror.index.usage()
        checks["index"] = {"ok": True}
    except Exception as exc:  # any failure to read is what this check reports
        checks["index"] = {"ok": False, "detail": str(exc)}
    upstreams = {}
    for upstream in mirror.upstreams:
        upstreams[upstream.name] = {
            "url": upstream.base,
            "last_ok": _iso(upstream.last_ok),
            "last_error": upstream.last_error,
            "ratelimit_remaining": upstream.rate_limit.remaining,
            # closed: asked as usual; open: believed down (uncached requests fail at once,
            # the next one probes); half-open: a probe is under way.
            "circuit": upstream.breaker.state.value,
            # offline: switched off by the operator (config or ``pullthrough offline``).
            "offline": upstream.offline,
            "downloads": upstream.downloads.in_use,
            "max_downloads": upstream.downloads.size,
        }
    checks["upstreams"] = upstreams
    last = mirror.sweeper.last
    checks["store"] = {
        "full": mirror.sweeper.full,
        "objects": last.objects if last else None,
        "bytes": last.stored_bytes if last else None,
        "limit": last.limit if last else None,
    }
    healthy = storage_ok and checks["index"]["ok"]
    return web.json_response(
        {"status": "ok" if healthy else "failing", "checks": checks},
        status=200 if healthy else 503,
    )


def _storage_writable(mirror: Mirror) -> tuple[bool, str]:
    probe = mirror.store.tmp_dir / f"health-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return False, f"cannot write to {mirror.store.tmp_dir}: {exc.strerror or exc}"
    return True, "writable"


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None
