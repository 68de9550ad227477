"""A hostile upstream that claims to hold everything (never instead of the real one): the
attacker of the provenance rule, who wants to read what other upstreams brought.

- ``HEAD .../blobs/<d>``: 200 with ``Content-Length: 7`` and ``Docker-Content-Digest: <d>``.
- ``HEAD .../manifests/<ref>``: 200 naming ``tag_digest`` for a tag (the digest of a
  manifest the attacker wants to read; else that of ``manifest``), the digest itself when
  asked by digest.
- ``GET .../manifests/<tag or its digest>``: ``manifest`` (a body of the test's choosing).
- Any other ``GET``: 404 (it does not have the bytes it claims).

``requests`` lists ``"<METHOD> <path>"`` for every request as it came.
"""

from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler

from .servers import HandlerServer, QuietHandler

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class ClaimingUpstream(HandlerServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []
        self.tag_digest: str | None = None
        self.manifest: bytes | None = None

    @property
    def own_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest or b"").hexdigest()

    def gets(self, contains: str = "") -> list[str]:
        return [r for r in self.requests if r.startswith("GET ") and contains in r]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(QuietHandler):

            def do_HEAD(self) -> None:  # noqa: N802
                upstream.requests.append(f"HEAD {self.path}")
                ref = self.path.split("?")[0].rsplit("/", 1)[-1]
                if "/blobs/" in self.path:
                    self.send(200, {"Content-Length": "7", "Docker-Content-Digest": ref})
                elif "/manifests/" in self.path:
                    digest = ref if ":" in ref else (upstream.tag_digest or upstream.own_digest)
                    self.send(
                        200,
                        {
                            "Content-Type": OCI_MANIFEST,
                            "Content-Length": "100",
                            "Docker-Content-Digest": digest,
                        },
                    )
                else:
                    self.send(200, {})

            def do_GET(self) -> None:  # noqa: N802
                upstream.requests.append(f"GET {self.path}")
                ref = self.path.split("?")[0].rsplit("/", 1)[-1]
                body = upstream.manifest
                if self.path.rstrip("/") == "/v2":
                    self.send(200, {"Content-Type": "application/json"}, b"{}")
                elif (
                    "/manifests/" in self.path
                    and body is not None
                    and (":" not in ref or ref == upstream.own_digest)
                ):
                    digest = upstream.own_digest
                    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}
                    self.send(200, headers, body)
                else:
                    self.send(404, {"Content-Type": "application/json"}, b'{"errors":[]}')

        return Handler
