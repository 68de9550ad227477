"""A CDN stand-in: serves blob files by digest without auth, and records who asked how.

Docker Hub answers blob GETs with a redirect to a CDN that wants no Authorization header
(and must not be given the registry's credentials). This server plays that CDN on a
second loopback address.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .net import free_port


@dataclass(frozen=True)
class CdnRequest:
    path: str
    authorization: str | None
    range: str | None


class Cdn:
    """``GET /blobs/<digest>`` → the bytes of ``locate(digest)``; 404 when it is None."""

    def __init__(self, locate: Callable[[str], Path | None], host: str = "127.0.0.2") -> None:
        self.locate = locate
        self.host = host
        self.port = free_port(host)
        self.requests: list[CdnRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Cdn:
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

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Cdn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
