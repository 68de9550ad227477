"""A store and index with many cached repositories, written directly (no pulls), for
measuring what reads them: ``seed_store(root, n)`` gives ``n`` repositories of the default
upstream, each with one tag on its own small OCI manifest, all sharing one config and
one layer. The index is created by the mirror's own ``Index`` so its schema is the real one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from pathlib import Path

from pullthrough.store.index import Index

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _put(root: Path, body: bytes) -> str:
    hexdigest = hashlib.sha256(body).hexdigest()
    path = root / "blobs" / "sha256" / hexdigest[:2] / hexdigest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return f"sha256:{hexdigest}"


def seed_store(
    root: Path,
    n: int,
    *,
    upstream: str = "docker.io",
    names: list[str] | None = None,
    tag: str = "v1",
) -> list[str]:
    """Write ``n`` repositories (``seeded/repo-00000`` ..., or ``names``, written as they
    are, as a hostile index record could hold them) with tag ``tag`` into the store under
    ``root`` and its index (``root/index.db``); returns their names."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = b"seeded layer\n" * 64
    config_digest, layer_digest = _put(root, config), _put(root, layer)
    asyncio.run(_create_index(root / "index.db"))
    now = time.time()
    names = names if names is not None else [f"seeded/repo-{i:05d}" for i in range(n)]
    shared = ((config_digest, config), (layer_digest, layer))
    blobs = [(d, len(b), None, now, now) for d, b in shared]
    links, served, tags = [], [(upstream, config_digest), (upstream, layer_digest)], []
    for i, name in enumerate(names):
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": len(layer)}],
            "annotations": {"seeded": str(i)},
        }).encode()
        digest = _put(root, manifest)
        blobs.append((digest, len(manifest), OCI_MANIFEST, now, now))
        served.append((upstream, digest))
        links += [(upstream, name, d) for d in (digest, config_digest, layer_digest)]
        tags.append((upstream, name, tag, OCI_MANIFEST, digest, now))
    db = sqlite3.connect(root / "index.db")
    with db:
        db.executemany("INSERT INTO blobs VALUES (?,?,?,?,?)", blobs)
        db.executemany("INSERT INTO links VALUES (?,?,?)", links)
        db.executemany("INSERT INTO served VALUES (?,?)", served)
        db.executemany("INSERT INTO tags VALUES (?,?,?,?,?,?)", tags)
    db.close()
    return names


async def _create_index(path: Path) -> None:
    index = Index(path)
    await index.open()
    await index.close()
