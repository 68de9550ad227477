"""A hand-written hostile upstream for fault injection (never instead of the real one):
each path answers with one kind of abuse a registry mirror must survive."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

from .servers import HandlerServer, QuietHandler

HUGE = 100 * 1024 * 1024


class EvilUpstream(HandlerServer):
    """``/v2/huge/manifests/*``: a 100 MB manifest (sent lazily, chunk by chunk);
    ``/v2/wide/manifests/*``: a manifest referencing 100 000 blobs (cut at the size cap);
    ``/v2/loop/...``: redirects to itself forever; ``/v2/file/...``: redirects to
    ``file:///etc/passwd``; ``/v2/ftp/...``: to ``ftp://``; ``/v2/tokenbomb/...``: a Bearer
    challenge whose realm answers 10 MB of JSON.

    Serves on ``url`` (``http://127.0.0.1:<port>``) between ``start()`` and ``stop()``;
    ``requests`` lists ``"<METHOD> <path>"`` for every request as it came."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        evil = self

        class Handler(QuietHandler):

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                path = self.path
                evil.requests.append(f"{self.command} {path}")
                if path == "/v2/" or path.startswith("/token"):
                    if path.startswith("/token"):
                        self.send(
                            200,
                            {"Content-Type": "application/json"},
                            b'{"token": "' + b"x" * (10 * 1024 * 1024) + b'"}',
                        )
                    else:
                        self.send(200, {})
                    return
                first = path.split("/")[2] if path.count("/") > 2 else ""
                if first == "tokenbomb":
                    realm = f"{evil.url}/token"
                    self.send(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'})
                elif first == "loop":
                    self.send(307, {"Location": path})
                elif first == "file":
                    self.send(307, {"Location": "file:///etc/passwd"})
                elif first == "ftp":
                    self.send(307, {"Location": "ftp://127.0.0.1/blob"})
                elif first == "huge" and "/manifests/" in path:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    self.send_header("Content-Length", str(HUGE))
                    self.end_headers()
                    if self.command == "GET":
                        try:
                            chunk = b" " * (1024 * 1024)
                            for _ in range(HUGE // len(chunk)):
                                self.wfile.write(chunk)
                        except OSError:
                            pass  # the mirror hung up, as it should
                elif first == "wide" and "/manifests/" in path:
                    layers = [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": f"sha256:{i:064x}",
                            "size": 1,
                        }
                        for i in range(100_000)
                    ]
                    body = json.dumps(
                        {
                            "schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": {"digest": f"sha256:{0:064x}", "size": 1},
                            "layers": layers,
                        }
                    ).encode()
                    self.send(
                        200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, body
                    )
                else:
                    self.send(404, {"Content-Type": "application/json"}, b'{"errors":[]}')

        return Handler
