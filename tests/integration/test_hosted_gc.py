"""``pullthrough gc`` on hosted repositories: what nothing references any more goes, the rest
stays, and a push under way keeps what it uploaded. Run beside a live server, as an
operator would."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import pytest

from tests.integration.conftest import MirrorFactory
from tests.integration.test_commands import ok, pullthrough
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GRACE = 2.0


def _config(grace: str) -> dict[str, Any]:
    return {
        "storage": {"delete": {"enabled": True}},
        "mirror": {
            "hosted": {"repositories": ["acme"], "gc_grace": grace},
            "access": [
                {"repositories": ["**"]},
                {"repositories": ["acme/**"], "actions": ["pull", "push", "delete"]},
            ],
        },
    }


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _push_blob(mirror: MirrorProcess, repo: str, data: bytes) -> str:
    digest = _digest(data)
    url = f"{mirror.url}/v2/{repo}/blobs/uploads/?digest={digest}"
    resp = http_request("POST", url, data=data)
    assert resp.status == 201, resp.body
    return digest


def _push_image(mirror: MirrorProcess, repo: str, tag: str, layers: list[bytes]) -> dict[str, str]:
    """Push a config, ``layers`` and a manifest tagged ``tag``: {"manifest": ..., "config":
    ..., "layer0": ...} digests."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    pushed = {"config": _push_blob(mirror, repo, config)}
    descriptors = []
    for i, layer in enumerate(layers):
        pushed[f"layer{i}"] = _push_blob(mirror, repo, layer)
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": pushed[f"layer{i}"],
                "size": len(layer),
            }
        )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": pushed["config"],
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    resp = http_request(
        "PUT",
        f"{mirror.url}/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, resp.body
    pushed["manifest"] = _digest(manifest)
    return pushed


def _status(mirror: MirrorProcess, repo: str, kind: str, ref: str) -> int:
    headers = {"Accept": OCI_MANIFEST}
    return http_request("GET", f"{mirror.url}/v2/{repo}/{kind}/{ref}", headers=headers).status


def test_gc_removes_exactly_what_no_hosted_manifest_references(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=_config(f"{GRACE}s"))
    shared = os.urandom(4096)
    old = _push_image(mirror, "acme/app", "old", [os.urandom(4096), shared])
    new = _push_image(mirror, "acme/app", "new", [shared])
    untagged = _push_image(mirror, "acme/app", "untagged", [os.urandom(1024)])
    # An untagged manifest is still a manifest: what it references stays.
    gone = http_request("DELETE", f"{mirror.url}/v2/acme/app/manifests/untagged")
    assert gone.status == 202
    deleted = http_request("DELETE", f"{mirror.url}/v2/acme/app/manifests/{old['manifest']}")
    assert deleted.status == 202
    time.sleep(GRACE + 0.5)
    before = set(mirror.stored_files())
    unreferenced = {old["manifest"], old["config"], old["layer0"]}
    assert unreferenced <= before

    dry = ok(pullthrough("gc", str(mirror.config_path), "--dry-run"))
    for digest in unreferenced:
        assert f"would remove {digest}" in dry
    assert set(mirror.stored_files()) == before  # a dry run removes nothing
    assert _status(mirror, "acme/app", "blobs", old["layer0"]) == 200

    out = ok(pullthrough("gc", str(mirror.config_path)))
    assert "hosted: removed 2 unreferenced blob links and 3 objects" in out, out
    assert set(mirror.stored_files()) == before - unreferenced
    for digest in (old["config"], old["layer0"]):
        assert _status(mirror, "acme/app", "blobs", digest) == 404
    assert _status(mirror, "acme/app", "manifests", old["manifest"]) == 404
    # What a remaining manifest references is served as before, the shared layer too.
    assert _status(mirror, "acme/app", "manifests", "new") == 200
    for key in ("config", "layer0"):
        assert _status(mirror, "acme/app", "blobs", new[key]) == 200
    assert _status(mirror, "acme/app", "manifests", untagged["manifest"]) == 200
    assert _status(mirror, "acme/app", "blobs", untagged["layer0"]) == 200

    again = ok(pullthrough("gc", str(mirror.config_path)))
    assert "hosted: removed 0 unreferenced blob links and 0 objects" in again, again
    assert upstream_proxy.requests() == []


def test_a_blob_pushed_within_the_grace_period_survives_gc(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    """A client pushes its blobs before the manifest that names them: gc between the two
    must not take them, or the manifest PUT would fail."""
    mirror = mirror_factory(upstream_proxy.url, config=_config("1h"))
    data = os.urandom(8192)
    blob = _push_blob(mirror, "acme/app", data)
    out = ok(pullthrough("gc", str(mirror.config_path)))
    assert "hosted: removed 0 unreferenced blob links and 0 objects" in out, out
    assert blob in mirror.stored_files()
    got = http_request("GET", f"{mirror.url}/v2/acme/app/blobs/{blob}")
    assert got.status == 200 and got.body == data
    # ... and the manifest that names it is then accepted.
    image = _push_image(mirror, "acme/app", "v1", [data])
    assert image["layer0"] == blob


def test_a_blob_deleted_and_pushed_again_is_kept(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=_config(f"{GRACE}s"))
    data = os.urandom(2048)
    blob = _push_blob(mirror, "acme/app", data)
    assert http_request("DELETE", f"{mirror.url}/v2/acme/app/blobs/{blob}").status == 202
    time.sleep(GRACE + 0.5)
    _push_blob(mirror, "acme/app", data)  # pushed again: held and fresh
    ok(pullthrough("gc", str(mirror.config_path)))
    got = http_request("GET", f"{mirror.url}/v2/acme/app/blobs/{blob}")
    assert got.status == 200 and got.body == data
