"""A CDN stand-in: serves blob files by digest without auth, and records who asked how.

Docker Hub answers blob GETs with a redirect to a CDN that wants no Authorization header
(and must not be given the registry's credentials). This server plays that CDN on a
second loopback address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .servers import HandlerServer


@dataclass(frozen=True)
class CdnRequest:
    path: str
    authorization: str | None
    range: str | None


class Cdn(HandlerServer):
    """``GET /blobs/<digest>`` → the bytes of ``locate(digest)``; 404 when it is None.

    Serves on ``url`` (``http://<host>:<port>``) between ``start()`` and ``stop()``, or in a
    ``with`` block; ``requests`` lists every GET as it came.
    """

    def __init__(self, locate: Callable[[str], Path | None], host: str = "127.0.0.2") -> None:
        super().__init__(host)
        self.locate = locate
        self.requests: list[CdnRequest] = []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                cdn.requests.append(
                    CdnRequest(
                        self.path, self.headers.get("Authorization"), self.headers.get("Range")
                    )
                )
                digest = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                path = cdn.locate(digest)
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes=") : -1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args: object) -> None:
                pass

        return Handler
