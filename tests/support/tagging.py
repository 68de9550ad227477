"""Many tags on the test registry without a push each: manifests PUT by HTTP, reusing the
blobs of one pushed image."""

from __future__ import annotations

import hashlib
import json

from tests.support.images import PushedImage
from tests.support.registry import Registry


def put_tags(
    upstream: Registry, image: PushedImage, tags: list[str], *, distinct: bool
) -> dict[str, str]:
    """Tag ``image``'s manifest as each of ``tags`` on ``upstream``; ``distinct``: each tag
    gets a manifest of its own (an annotation naming the tag; same blobs). Returns tag →
    manifest digest."""
    found: dict[str, str] = {}
    for tag in tags:
        body = image.raw_manifest
        if distinct:
            doc = json.loads(body)
            doc.setdefault("annotations", {})["test.sync/tag"] = tag
            body = json.dumps(doc).encode()
        resp = upstream.request(
            "PUT",
            f"/v2/{image.repo}/manifests/{tag}",
            headers={"Content-Type": image.media_type},
            data=body,
        )
        assert resp.status == 201, (resp.status, resp.body[:300])
        found[tag] = "sha256:" + hashlib.sha256(body).hexdigest()
    return found
