"""Hosted repositories in listings: ``/v2/_catalog`` names them to clients that may pull
them, and ``pullthrough ls`` / ``du`` show them apart from the cache."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.integration.conftest import MirrorFactory
from tests.integration.test_commands import ok, pullthrough
from tests.integration.test_hosted_gc import _push_image
from tests.support.images import ImageSet
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
PUSHERS: dict[str, Any] = {
    "mirror": {
        "hosted": {"repositories": ["acme"]},
        "access": [
            {"repositories": ["**"]},
            {"repositories": ["acme/**"], "actions": ["pull", "push"]},
        ],
    },
}


def _catalog(mirror: MirrorProcess, query: str = "") -> Any:
    got = http_request("GET", f"{mirror.url}/v2/_catalog{query}")
    assert got.status == 200, got.body
    return got


def test_catalog_lists_hosted_repositories_beside_cached_ones(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, images: ImageSet
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=PUSHERS)
    _push_image(mirror, "acme/app", "v1", [os.urandom(512)])
    _push_image(mirror, "acme/secret", "v1", [os.urandom(512)])
    cached = images.oci_small
    url = f"{mirror.url}/v2/{cached.repo}/manifests/{cached.tag}"
    assert http_request("GET", url, headers=ACCEPT).status == 200

    listed = json.loads(_catalog(mirror).body)["repositories"]
    assert listed == sorted(["acme/app", "acme/secret", cached.repo])
    first = _catalog(mirror, "?n=1")
    assert json.loads(first.body)["repositories"] == ["acme/app"]
    assert "last=acme%2Fapp" in (first.header("Link") or "") or "last=acme/app" in (
        first.header("Link") or ""
    )
    rest = json.loads(_catalog(mirror, "?last=acme/app").body)["repositories"]
    assert rest == sorted(["acme/secret", cached.repo])

    # Served again with rules that let nobody pull acme/secret: the catalog says nothing of it.
    mirror.stop()
    narrowed = mirror_factory(
        upstream_proxy.url,
        config={
            "storage": {"filesystem": {"rootdirectory": str(mirror.root)}},
            "mirror": {
                "hosted": {"repositories": ["acme"]},
                "access": [{"repositories": ["library/**", "acme/app"]}],
            },
        },
    )
    listed = json.loads(_catalog(narrowed).body)["repositories"]
    assert listed == sorted(["acme/app", cached.repo])
    assert http_request("GET", f"{narrowed.url}/v2/acme/secret/tags/list").status == 403


def test_ls_and_du_show_hosted_repositories_apart_from_the_cache(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, images: ImageSet
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=PUSHERS)
    layer = os.urandom(2048)
    pushed = _push_image(mirror, "acme/app", "v1", [layer])
    cached = images.oci_small
    url = f"{mirror.url}/v2/{cached.repo}/manifests/{cached.tag}"
    assert http_request("GET", url, headers=ACCEPT).status == 200
    stored = mirror.stored_files()
    image_bytes = sum(stored[pushed[k]].stat().st_size for k in ("manifest", "config", "layer0"))

    doc = json.loads(ok(pullthrough("ls", str(mirror.config_path), "--json")))
    assert [i["repository"] for i in doc["images"]] == [cached.repo]
    assert doc["hosted"] == [
        {
            "repository": "acme/app",
            "tag": "v1",
            "digest": pushed["manifest"],
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "size": image_bytes,
            "objects": 3,
        }
    ]
    text = ok(pullthrough("ls", str(mirror.config_path)))
    cache_part, hosted_part = text.split("HOSTED REPOSITORY", 1)
    assert cached.repo in cache_part and "acme/app" not in cache_part
    assert "acme/app" in hosted_part and pushed["manifest"] in hosted_part

    usage = json.loads(ok(pullthrough("du", str(mirror.config_path), "--json")))
    assert usage["hosted"] == {
        "repositories": [{"repository": "acme/app", "objects": 3, "bytes": image_bytes}],
        "total": {"objects": 3, "bytes": image_bytes},
    }
    assert all(r["repository"] != "acme/app" for r in usage["repositories"])
    assert usage["unlinked"] == {"objects": 0, "bytes": 0}
    du_text = ok(pullthrough("du", str(mirror.config_path)))
    assert "HOSTED REPOSITORY" in du_text and "(all hosted, each object once)" in du_text
