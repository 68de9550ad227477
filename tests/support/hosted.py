"""Pieces a test pushing to hosted repositories by hand uses: digests, OCI error codes,
an image manifest naming given blobs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.support.net import http_request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# Hosted repositories under acme/ that anyone may push to and delete from (a config
# fragment merged into a mirror's).
HOSTED_ACME: dict[str, Any] = {
    "storage": {"delete": {"enabled": True}},
    "mirror": {
        "hosted": {"repositories": ["acme"]},
        "access": [
            {"repositories": ["**"]},
            {"repositories": ["acme/**"], "actions": ["pull", "push", "delete"]},
        ],
    },
}


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def error_code(resp: Any) -> str:
    """The first OCI error code of a response's body."""
    return str(json.loads(resp.body)["errors"][0]["code"])


def image_manifest(config: str, config_size: int, layers: list[tuple[str, int]]) -> bytes:
    """An OCI image manifest naming the config ``config`` and ``layers`` (digest, size)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": config_size,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}
            for d, n in layers
        ],
    }
    return json.dumps(doc).encode()


def put_manifest(base_url: str, repo: str, reference: str, manifest: bytes) -> Any:
    """PUT an OCI image manifest to ``<base_url>/v2/<repo>/manifests/<reference>``."""
    return http_request(
        "PUT",
        f"{base_url}/v2/{repo}/manifests/{reference}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=60,
    )


CONFIG_JSON = b'{"architecture":"amd64","os":"linux"}'


def push_image(base_url: str, repo: str, layer: bytes) -> bytes:
    """``layer`` and a small config pushed monolithically to ``repo``; returns an image
    manifest naming them (not pushed)."""
    for data in (layer, CONFIG_JSON):
        resp = http_request(
            "POST", f"{base_url}/v2/{repo}/blobs/uploads/?digest={digest_of(data)}", data=data
        )
        assert resp.status == 201, resp.body
    return image_manifest(
        digest_of(CONFIG_JSON), len(CONFIG_JSON), [(digest_of(layer), len(layer))]
    )
