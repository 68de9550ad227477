"""A scripted HTTP server for outbound-policy tests: answers every request with what a
function says, and records every connection and request, so a test can show that nothing
reached an address the mirror must not contact.

Plays an "internal service" (something on a non-public address a hostile upstream wants the
mirror to request), a hostile upstream that redirects or challenges, a CDN that asks for
credentials, or the token realm such a CDN names.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Self

from .servers import HandlerServer, QuietHandler, _Server

# (status, headers, body) for one request, from its method and path (query included).
Answer = tuple[int, dict[str, str], bytes]
Script = Callable[[str, str], Answer]


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    authorization: str | None


def answer_ok(method: str, path: str) -> Answer:
    return 200, {"Content-Type": "text/plain"}, b"internal secret\n"


class Scripted(HandlerServer):
    """``script(method, path)`` answers each request on ``http://<host>:<port>``; ``host``
    may be an IPv6 loopback address (``::1``). ``connections`` counts accepted TCP
    connections (whether or not a request followed); ``requests`` lists the requests."""

    def __init__(self, script: Script = answer_ok, host: str = "127.0.0.1") -> None:
        self._v6 = ":" in host
        if self._v6:
            self.host = host
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                self.port = int(s.getsockname()[1])
            self._server = None
        else:
            super().__init__(host)
        self.script = script
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._connections = 0

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if self._v6 else super().url

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def start(self) -> Self:
        if self._server is None:
            owner = self

            class Server(_Server):
                address_family = socket.AF_INET6 if owner._v6 else socket.AF_INET

                def verify_request(self, request: object, client_address: object) -> bool:
                    with owner._lock:
                        owner._connections += 1
                    return True

            server = Server((self.host, self.port), self._handler())
            threading.Thread(
                target=server.serve_forever, name=f"Scripted:{self.port}", daemon=True
            ).start()
            self._server = server
        return self

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(QuietHandler):
            def _answer(self) -> None:
                with owner._lock:
                    owner.requests.append(
                        SeenRequest(self.command, self.path, self.headers.get("Authorization"))
                    )
                self.send(*owner.script(self.command, self.path))

            do_GET = do_HEAD = _answer  # noqa: N815 - the http.server API

        return Handler


def redirecting(routes: dict[str, str]) -> Script:
    """A registry that redirects every request under ``/v2/<first>/`` to
    ``routes[first]`` (404 for other names; 200 on ``/v2/``)."""

    def script(method: str, path: str) -> Answer:
        if path.split("?", 1)[0] == "/v2/":
            return 200, {}, b""
        first = path.split("/")[2] if path.count("/") > 2 else ""
        if first in routes:
            return 307, {"Location": routes[first]}, b""
        return 404, {"Content-Type": "application/json"}, b'{"errors":[]}'

    return script


def challenging(www_authenticate: str) -> Script:
    """A server that answers every request 401 with this challenge (``/v2/``: 200)."""

    def script(method: str, path: str) -> Answer:
        if path.split("?", 1)[0] == "/v2/":
            return 200, {}, b""
        return 401, {"WWW-Authenticate": www_authenticate}, b""

    return script


def issuing(token: str = "issued-token") -> Script:
    """A token realm that hands everyone a token."""

    def script(method: str, path: str) -> Answer:
        body = b'{"token": "' + token.encode() + b'", "expires_in": 300}'
        return 200, {"Content-Type": "application/json"}, body

    return script
