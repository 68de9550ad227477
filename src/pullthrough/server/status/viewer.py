"""Who is looking at the status page, and which repositories they may see.

A viewer sees exactly what they may pull: the page is behind the same client
authentication as pulls, and every repository it names (in the content table, in the
fetches in flight) passes ``mirror.access`` for the viewer and, with ``auth.token``, the
token's ``pull`` grant on the name the mirror would check for a pull of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pullthrough.clientauth.access import AccessRules
from pullthrough.clientauth.tokens import Grant
from pullthrough.server.auth import GRANT_KEY
from pullthrough.server.routes import ACCESS_KEY, AUTH_KEY, KIND_KEY, MIRROR_KEY

# The route kind status requests are authorized (and counted in pullthrough_requests) as.
KIND = "ui"


@dataclass(frozen=True, slots=True)
class Viewer:
    """An authenticated client of the status page."""

    user: str | None  # None: anonymous
    access: AccessRules
    grant: Grant | None  # the Bearer token's claims, with auth.token
    default_upstream: str

    def may_pull(self, upstream: str, repo: str) -> bool:
        """Whether this viewer could pull ``repo`` of ``upstream`` through the mirror: the
        same decision ``server.routes`` makes for a pull, on the same resolved names."""
        if not self.access.allows(self.user, upstream, repo):
            return False
        if self.grant is None:
            return True
        # The scope a pull of this repository asks the token for (server.routing.target).
        scope = repo if upstream == self.default_upstream else f"{upstream}/{repo}"
        return self.grant.allows("repository", scope, "pull")


async def viewer(request: web.Request) -> Viewer:
    """Authenticate the request as a pull would be; raises Unauthorized (401 with the
    challenge a browser or script needs) otherwise."""
    request[KIND_KEY] = KIND
    user = await request.app[AUTH_KEY].authorize(request, KIND, None)
    grant = request.get(GRANT_KEY)
    return Viewer(
        user=user,
        access=request.app[ACCESS_KEY],
        grant=grant if isinstance(grant, Grant) else None,
        default_upstream=request.app[MIRROR_KEY].config.default_upstream,
    )
