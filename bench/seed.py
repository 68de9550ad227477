"""Deterministic bench images: OCI layouts written here, pushed to the upstream with skopeo.

Layers are uncompressed single-file tars of seeded random bytes, sized so the layer blob
is exactly the requested size (a multiple of 512: header + data + two zero blocks), and
pushed with ``--preserve-digests`` so skopeo neither compresses nor changes a digest.
Same arguments, same digests, on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from procs import clean_env

SKOPEO = "/usr/bin/skopeo"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = ", ".join(
    [
        MT_MANIFEST,
        MT_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
CHUNK = 4 << 20


@dataclass
class Seeded:
    """One pushed image or index: where it is and what the upstream holds."""

    repo: str
    tag: str
    digest: str  # top-level manifest (or index) digest
    media_type: str
    layer_digest: str = ""  # the (first) layer of a single-platform image
    layer_size: int = 0
    children: list[str] = field(default_factory=list)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _put(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return "sha256:" + digest


def _layer(layout: Path, size: int, seed: str) -> tuple[str, str, int]:
    """Write a tar layer of exactly ``size`` bytes; return (digest, diff_id, size)."""
    if size % 512 or size < 2048:
        raise ValueError("layer size must be a multiple of 512 and at least 2 KiB")
    data_size = size - 3 * 512
    info = tarfile.TarInfo("data/payload.bin")
    info.size, info.mode, info.mtime = data_size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    rng = random.Random(seed)
    hasher = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=layout / "blobs/sha256", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        head = info.tobuf(format=tarfile.USTAR_FORMAT)
        assert len(head) == 512
        out.write(head)
        hasher.update(head)
        left = data_size
        while left > 0:  # bounded: left shrinks by >= 1 chunk each pass
            chunk = rng.randbytes(min(CHUNK, left))
            out.write(chunk)
            hasher.update(chunk)
            left -= len(chunk)
        tail = b"\0" * 1024
        out.write(tail)
        hasher.update(tail)
    digest = "sha256:" + hasher.hexdigest()
    os.replace(tmp, layout / "blobs/sha256" / digest.split(":")[1])
    # Uncompressed: the diff_id is the layer digest.
    return digest, digest, size


def _image(layout: Path, layer_sizes: list[int], seed: str, arch: str) -> tuple[str, int, list]:
    layers = [_layer(layout, s, f"{seed}/{arch}/{i}") for i, s in enumerate(layer_sizes)]
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Labels": {"pullthrough.bench": seed}},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d, _ in layers]},
    }
    config_bytes = _json(config)
    config_digest = _put(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MT_LAYER, "digest": d, "size": n} for d, _, n in layers],
    }
    body = _json(manifest)
    return _put(layout, body), len(body), layers


def _init(layout: Path) -> None:
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def _tag(layout: Path, media_type: str, digest: str, size: int, ref: str, **extra: Any) -> None:
    entry = {
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "annotations": {"org.opencontainers.image.ref.name": ref},
        **extra,
    }
    (layout / "index.json").write_bytes(_json({"schemaVersion": 2, "manifests": [entry]}))


def skopeo(args: list[str], auth_file: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [SKOPEO, *args],
        env=clean_env({"REGISTRY_AUTH_FILE": str(auth_file)}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def push(
    layout: Path,
    ref: str,
    dest: str,
    auth_file: Path,
    all_platforms: bool,
    cert_dir: Path | None = None,
) -> None:
    """Plain HTTP, or with ``cert_dir`` (``ca.crt``) TLS verified against that CA."""
    tls = f"--dest-cert-dir={cert_dir}" if cert_dir else "--dest-tls-verify=false"
    args = ["copy", "--retry-times=0", tls, "--preserve-digests"]
    if all_platforms:
        args.append("--all")
    skopeo([*args, f"oci:{layout}:{ref}", f"docker://{dest}"], auth_file)


def seed_image(
    work: Path,
    upstream_host: str,
    repo: str,
    layer_sizes: list[int],
    seed: str,
    auth_file: Path,
    cert_dir: Path | None = None,
) -> Seeded:
    layout = work / "layout"
    _init(layout)
    try:
        digest, size, layers = _image(layout, layer_sizes, seed, "amd64")
        _tag(layout, MT_MANIFEST, digest, size, "v1")
        push(layout, "v1", f"{upstream_host}/{repo}:v1", auth_file, False, cert_dir)
    finally:
        shutil.rmtree(layout, ignore_errors=True)  # the upstream holds it now: free the disk
    return Seeded(repo, "v1", digest, MT_MANIFEST, layers[-1][0], layers[-1][2])


def seed_index(
    work: Path,
    upstream_host: str,
    repo: str,
    layer_size: int,
    seed: str,
    auth_file: Path,
    cert_dir: Path | None = None,
) -> Seeded:
    layout = work / "layout"
    _init(layout)
    try:
        entries, children = [], []
        for arch in ("amd64", "arm64"):
            digest, size, _ = _image(layout, [layer_size], seed, arch)
            children.append(digest)
            entries.append(
                {
                    "mediaType": MT_MANIFEST,
                    "digest": digest,
                    "size": size,
                    "platform": {"architecture": arch, "os": "linux"},
                }
            )
        body = _json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries})
        index_digest = _put(layout, body)
        _tag(layout, MT_INDEX, index_digest, len(body), "v1")
        push(layout, "v1", f"{upstream_host}/{repo}:v1", auth_file, True, cert_dir)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    return Seeded(repo, "v1", index_digest, MT_INDEX, children=children)


def as_dict(seeded: Seeded) -> dict[str, Any]:
    return asdict(seeded)
