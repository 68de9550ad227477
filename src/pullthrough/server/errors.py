"""Turn every failure into an OCI error body, in one place."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from pullthrough.errors import RegistryError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    413: "SIZE_INVALID",
}


def error_response(request: web.Request, err: RegistryError) -> web.Response:
    body = json.dumps(err.body()).encode()
    headers = {"Docker-Distribution-API-Version": "registry/2.0", **err.headers}
    return web.Response(
        status=err.status, body=body, content_type="application/json", headers=headers
    )


def _plain(status: int, code: str, message: str) -> RegistryError:
    err = RegistryError(message)
    err.status, err.code = status, code
    return err


CLIENT_CLOSED = 499


@web.middleware
async def oci_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Registry errors become their OCI bodies; anything unexpected is logged with its
    traceback and answered 500 with an OCI body, never a traceback page."""
    try:
        return await handler(request)
    except RegistryError as err:
        if err.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, err.message)
        return error_response(request, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "UNKNOWN")
        return error_response(request, _plain(exc.status, code, exc.reason))
    except ConnectionResetError:
        # The client hung up (mid-push, mid-download): nobody is left to answer, and it
        # is not the mirror's error. Logged as what it is; the status (nginx's "client
        # closed request") only reaches the access log.
        log.info("%s %s: the client closed the connection", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")
    except TimeoutError:
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(
            request, _plain(500, "UNKNOWN", "internal error; see the mirror's log")
        )
