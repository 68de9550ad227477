"""A large manifest (an index of many platforms reaches several MB) is hashed and parsed once,
when it is stored, off the event loop; later requests are served from what was parsed."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

import pullthrough.manifest
from pullthrough.manifest import OCI_INDEX, OCI_MANIFEST
from pullthrough.metrics import Metrics
from pullthrough.mirror.manifests import ManifestService
from pullthrough.mirror.provenance import Provenance
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore
from pullthrough.store.index import Index
from pullthrough.upstream.client import ManifestBody, ManifestHead, UpstreamClient


def _big_index() -> bytes:
    entries = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": f"sha256:{i:064x}",
            "size": 500,
            "platform": {"os": "linux", "architecture": f"arch{i}"},
            "annotations": {"org.example.note": "x" * 40},
        }
        for i in range(11_000)
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


@dataclass
class _Config:
    tag_freshness: float = 0.0


class _Upstream:
    name = "reg.example"
    config = _Config()

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.digest = "sha256:" + hashlib.sha256(body).hexdigest()

    async def head_manifest(self, repo: str, ref: str, accept: Any) -> ManifestHead:
        return ManifestHead(self.digest, OCI_INDEX, len(self.body))

    async def get_manifest(self, repo: str, ref: str, accept: Any) -> ManifestBody:
        return ManifestBody(self.body, OCI_INDEX, self.digest)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ManifestService]:
    store = BlobStore(tmp_path / "data")
    store.prepare()
    index = Index(tmp_path / "index.db")
    await index.open()
    yield ManifestService(
        store=store, index=index, provenance=Provenance(index), metrics=Metrics()
    )
    await index.close()


async def test_a_large_manifest_is_parsed_once_and_never_on_the_event_loop(
    service: ManifestService, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _big_index()
    assert len(body) > 3_000_000
    upstream = _Upstream(body)
    loop_thread = threading.get_ident()
    parses: list[bool] = []  # per json.loads of a manifest: on the event loop's thread?
    real_loads = json.loads

    def loads(data: Any, **kw: Any) -> Any:
        if len(data) > 1_000_000:
            parses.append(threading.get_ident() == loop_thread)
        return real_loads(data, **kw)

    monkeypatch.setattr(pullthrough.manifest.json, "loads", loads)
    client = cast(UpstreamClient, upstream)
    first = await service.by_tag(client, "big", "latest", (OCI_INDEX,))
    assert first.body == body and len(first.children.manifests) == 11_000
    assert parses and not any(parses), "parsed on the event loop"
    parses.clear()
    for _ in range(5):
        again = await service.by_digest(client, "big", parse_digest(upstream.digest))
        assert again.body == body
        again = await service.by_tag(client, "big", "latest", (OCI_INDEX,))
        assert again.body == body
    assert parses == [], "parsed again to serve it"
