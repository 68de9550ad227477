"""What the server says about itself on every response: ``Server: pullthrough``, with no
version of pullthrough, aiohttp or Python."""

from __future__ import annotations

from aiohttp import web_response

SERVER = "pullthrough"


def hide_server_software() -> None:
    """Make ``Server: pullthrough`` the header on every response this process serves,
    the main and the debug port alike.

    aiohttp's default (``Python/3.11 aiohttp/3.14.5``) tells a scanner which advisories
    apply. It is filled in after handlers and middlewares run, and also on the 400s aiohttp
    sends for requests it cannot parse, where no handler or ``on_response_prepare`` signal
    runs at all; so the default itself is replaced (aiohttp reads this module global each
    time it prepares a response's headers). A test on a running ``pullthrough serve`` pins
    it, should aiohttp move it.
    """
    # Not in aiohttp.web_response.__all__: it is imported there from aiohttp.http.
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]
