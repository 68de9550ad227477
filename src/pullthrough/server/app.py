"""The aiohttp application: one catch-all route into the registry API, the error
middleware, and the mirror's lifecycle bound to the app's."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from pullthrough.clientauth.access import AccessRules
from pullthrough.config import Config
from pullthrough.mirror.service import Mirror
from pullthrough.server.auth import build_auth
from pullthrough.server.disconnects import DISCONNECTS_KEY, Disconnects
from pullthrough.server.errors import oci_errors
from pullthrough.server.forwarding import FORWARDER_KEY, UploadForwarder
from pullthrough.server.hosted_routes import HOSTED_KEY, UPLOADS_KEY, is_hosted_write
from pullthrough.server.limits import body_limit
from pullthrough.server.metrics import count_requests
from pullthrough.server.routes import ACCESS_KEY, AUTH_KEY, MIRROR_KEY, dispatch
from pullthrough.server.status import api as status_api
from pullthrough.server.verification import VERIFY_KEY, ReadVerification

log = logging.getLogger(__name__)


def build_app(config: Config) -> web.Application:
    """A ready-to-run application for ``config``; the mirror starts with the app."""
    limits = config.limits
    mirror = Mirror(config)
    hosted = mirror.hosted

    def pushes(request: web.Request) -> bool:
        return hosted is not None and is_hosted_write(request, hosted)

    app = web.Application(
        middlewares=[count_requests, oci_errors, body_limit(limits.max_body_size, exempt=pushes)],
        client_max_size=limits.max_body_size,
    )
    if mirror.hosted is not None and mirror.uploads is not None:
        app[HOSTED_KEY] = mirror.hosted
        app[UPLOADS_KEY] = mirror.uploads
        if mirror.uploads.owners is not None:
            # Replicas on a bucket: a session's requests reach the replica holding it.
            app[FORWARDER_KEY] = UploadForwarder(mirror.uploads.owners)
    app[MIRROR_KEY] = mirror
    app[AUTH_KEY] = build_auth(config.auth)
    app[ACCESS_KEY] = AccessRules(config.access)
    app[DISCONNECTS_KEY] = Disconnects()
    app[VERIFY_KEY] = ReadVerification(
        enabled=config.verify_on_read,
        verified=mirror.store.verified,
        quarantine=mirror.quarantine,
        metrics=mirror.metrics,
    )

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await mirror.start(schedule=True)
        for upstream in config.upstreams:
            default = " (default)" if upstream.name == config.default_upstream else ""
            log.info("mirroring %s%s from %s", upstream.name, default, upstream.url)
        log.info("storing into %s", config.root)
        if config.hosted is not None:
            log.info("hosting %s", ", ".join(f"{p}/**" for p in config.hosted.prefixes))
        yield
        if FORWARDER_KEY in app:
            await app[FORWARDER_KEY].close()
        await mirror.stop()

    app.cleanup_ctx.append(lifecycle)
    if config.ui_enabled:
        status_api.add_routes(app)  # before the catch-all, which would take /ui/ too
    if mirror.cluster is not None and mirror.cluster.peers is not None:
        from pullthrough.server import peer_routes

        peer_routes.add_routes(app, mirror.cluster.peers.key)  # before the catch-all too
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
