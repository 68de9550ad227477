"""Build random OCI image layouts on disk and move them around with skopeo.

Layers are single-file tar archives filled with random bytes (seeded when a
``seed`` is given, so the same arguments always give the same digests). Layers
are uncompressed by default; ``compression="gzip"`` stores them as gzip level 0
(deflate "stored" blocks: fast, deterministic, still a valid ``tar+gzip``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import re
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .net import clean_env
from .regclient import bearer_request

SKOPEO = "/usr/bin/skopeo"

MT_OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ALL_MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST)
MANIFEST_ACCEPT = ", ".join(ALL_MANIFEST_TYPES)
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)

REF_ANNOTATION = "org.opencontainers.image.ref.name"
_CHUNK = 4 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Compression = Literal["none", "gzip"]


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: ``digest`` is ``sha256:<hex>``."""

    digest: str
    size: int
    media_type: str

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """OCI descriptor dict (``mediaType``, ``digest``, ``size`` + extra keys)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass
class Image:
    """A single-platform image stored in the OCI layout at ``layout`` under tag ``ref``."""

    layout: Path
    ref: str
    manifest: Blob
    manifest_bytes: bytes = field(repr=False)
    config: Blob
    layers: list[Blob]
    diff_ids: list[str]
    architecture: str = "amd64"
    os: str = "linux"

    @property
    def manifest_digest(self) -> str:
        """Digest of the OCI manifest (what an OCI-preserving push stores)."""
        return self.manifest.digest

    @property
    def config_digest(self) -> str:
        return self.config.digest

    @property
    def layer_digests(self) -> list[str]:
        return [b.digest for b in self.layers]

    @property
    def layer_sizes(self) -> list[int]:
        return [b.size for b in self.layers]

    @property
    def blob_digests(self) -> set[str]:
        """Config + layer digests (not the manifest)."""
        return {self.config.digest, *self.layer_digests}

    @property
    def total_blob_bytes(self) -> int:
        """Sum of config and layer sizes."""
        return self.config.size + sum(self.layer_sizes)

    @property
    def oci_ref(self) -> str:
        """``oci:<layout>:<ref>`` for skopeo."""
        return f"oci:{self.layout}:{self.ref}"

    def blob_file(self, digest: str) -> Path:
        """Path of blob ``digest`` inside the layout."""
        return _blob_path(self.layout, digest)


@dataclass
class Index:
    """A multi-platform OCI image index stored in the layout at ``layout`` under ``ref``."""

    layout: Path
    ref: str
    index: Blob
    index_bytes: bytes = field(repr=False)
    images: list[Image]

    @property
    def index_digest(self) -> str:
        return self.index.digest

    @property
    def manifest_digest(self) -> str:
        """Same as ``index_digest`` (the top-level manifest), for symmetry with ``Image``."""
        return self.index.digest

    @property
    def child_manifest_digests(self) -> list[str]:
        return [im.manifest_digest for im in self.images]

    @property
    def blob_digests(self) -> set[str]:
        """Config + layer digests of all platforms (no manifests)."""
        out: set[str] = set()
        for im in self.images:
            out |= im.blob_digests
        return out

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.ref}"

    def blob_file(self, digest: str) -> Path:
        """Path of blob ``digest`` (any platform's blob, or a manifest) inside the layout."""
        return _blob_path(self.layout, digest)

    def image_for(self, architecture: str, os_name: str = "linux") -> Image:
        """The platform image for ``architecture``/``os_name``; ``KeyError`` if absent."""
        for im in self.images:
            if im.architecture == architecture and im.os == os_name:
                return im
        raise KeyError(f"{os_name}/{architecture}")


# ---------------------------------------------------------------------------- layout writing


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def _init_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": MT_OCI_LAYOUT_VERSION}))


def _write_blob(layout: Path, data: bytes, media_type: str) -> Blob:
    digest = sha256_digest(data)
    path = _blob_path(layout, digest)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return Blob(digest, len(data), media_type)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _random_chunks(size: int, rng: random.Random | None) -> Iterator[bytes]:
    left = size
    while left > 0:
        n = min(_CHUNK, left)
        yield rng.randbytes(n) if rng is not None else os.urandom(n)
        left -= n


def _tar_chunks(name: str, size: int, rng: random.Random | None) -> Iterator[bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    yield from _random_chunks(size, rng)
    pad = (-size) % tarfile.BLOCKSIZE
    yield b"\0" * (pad + 2 * tarfile.BLOCKSIZE)


def _write_layer(
    layout: Path, name: str, size: int, rng: random.Random | None, compression: Compression
) -> tuple[Blob, str]:
    """Stream one layer into the layout; return (blob, diff_id)."""
    diff_hash = hashlib.sha256()
    blob_hash = hashlib.sha256()
    blob_size = 0
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31) if compression == "gzip" else None
    fd, tmp_name = tempfile.mkstemp(dir=layout / "blobs" / "sha256", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        for chunk in _tar_chunks(name, size, rng):
            diff_hash.update(chunk)
            data = compressor.compress(chunk) if compressor is not None else chunk
            blob_hash.update(data)
            blob_size += len(data)
            out.write(data)
        if compressor is not None:
            tail = compressor.flush()
            blob_hash.update(tail)
            blob_size += len(tail)
            out.write(tail)
    digest = "sha256:" + blob_hash.hexdigest()
    os.replace(tmp_name, _blob_path(layout, digest))
    media_type = MT_OCI_LAYER_GZIP if compression == "gzip" else MT_OCI_LAYER
    return Blob(digest, blob_size, media_type), "sha256:" + diff_hash.hexdigest()


def _set_ref(layout: Path, descriptor: dict[str, Any], ref: str) -> None:
    """Add/replace the index.json entry tagged ``ref``, keeping other tags."""
    index_path = layout / "index.json"
    manifests: list[dict[str, Any]] = []
    if index_path.exists():
        manifests = [
            m
            for m in json.loads(index_path.read_text()).get("manifests", [])
            if m.get("annotations", {}).get(REF_ANNOTATION) != ref
        ]
    manifests.append({**descriptor, "annotations": {REF_ANNOTATION: ref}})
    index_path.write_bytes(_json_bytes({"schemaVersion": 2, "manifests": manifests}))


def _build_image(
    layout: Path,
    layers: Sequence[int],
    seed: int | str | None,
    architecture: str,
    os_name: str,
    variant: str | None,
    compression: Compression,
    labels: dict[str, str] | None,
) -> Image:
    nonce = str(seed) if seed is not None else os.urandom(16).hex()
    layer_blobs: list[Blob] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layers):
        rng = (
            random.Random(f"{seed}/{os_name}/{architecture}/{variant}/{i}")
            if seed is not None
            else None
        )
        blob, diff_id = _write_layer(layout, f"data/layer-{i}.bin", size, rng, compression)
        layer_blobs.append(blob)
        diff_ids.append(diff_id)
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/bin:/bin"],
            "Labels": {"pullthrough.test.nonce": nonce, **(labels or {})},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"layer {i}"}
            for i in range(len(layers))
        ],
    }
    if variant:
        config["variant"] = variant
    config_blob = _write_blob(layout, _json_bytes(config), MT_OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [b.descriptor() for b in layer_blobs],
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_blob = _write_blob(layout, manifest_bytes, MT_OCI_MANIFEST)
    return Image(
        layout=layout,
        ref="",
        manifest=manifest_blob,
        manifest_bytes=manifest_bytes,
        config=config_blob,
        layers=layer_blobs,
        diff_ids=diff_ids,
        architecture=architecture,
        os=os_name,
    )


def make_image(
    dir: Path | str,
    layers: Sequence[int] = (1024 * 1024,),
    seed: int | str | None = None,
    *,
    ref: str = "latest",
    architecture: str = "amd64",
    os_name: str = "linux",
    compression: Compression = "none",
    labels: dict[str, str] | None = None,
) -> Image:
    """Write a single-platform OCI image into the OCI layout ``dir`` tagged ``ref``.

    One layer per entry of ``layers`` (the size of the random file inside the tar).
    Same ``seed`` + arguments => byte-identical blobs and digests; ``seed=None``
    => fresh random content every call. An existing layout in ``dir`` is kept;
    only its ``ref`` entry is replaced, so several images may share a layout.
    """
    layout = Path(dir)
    _init_layout(layout)
    image = _build_image(layout, layers, seed, architecture, os_name, None, compression, labels)
    image.ref = ref
    _set_ref(layout, image.manifest.descriptor(), ref)
    return image


def make_index(
    dir: Path | str,
    platforms: Sequence[tuple[str, str] | tuple[str, str, str]] = (
        ("amd64", "linux"),
        ("arm64", "linux"),
    ),
    layer_size: int = 256 * 1024,
    seed: int | str | None = None,
    *,
    ref: str = "latest",
    layers_per_image: int = 1,
    compression: Compression = "none",
) -> Index:
    """Write an OCI image index with one image per ``(architecture, os[, variant])``.

    Every platform gets distinct random layers of ``layer_size`` bytes. The layout's
    ``index.json`` entry ``ref`` points at the index (not at the children).
    """
    layout = Path(dir)
    _init_layout(layout)
    images: list[Image] = []
    entries: list[dict[str, Any]] = []
    for plat in platforms:
        arch, os_name = plat[0], plat[1]
        variant = plat[2] if len(plat) > 2 else None
        im = _build_image(
            layout, [layer_size] * layers_per_image, seed, arch, os_name, variant, compression, None
        )
        im.ref = ref
        images.append(im)
        platform: dict[str, str] = {"architecture": arch, "os": os_name}
        if variant:
            platform["variant"] = variant
        entries.append(im.manifest.descriptor(platform=platform))
    index_bytes = _json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries})
    index_blob = _write_blob(layout, index_bytes, MT_OCI_INDEX)
    _set_ref(layout, index_blob.descriptor(), ref)
    return Index(layout=layout, ref=ref, index=index_blob, index_bytes=index_bytes, images=images)


# ---------------------------------------------------------------------------- skopeo


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; ``stderr`` holds its message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo failed ({returncode}): {' '.join(args)}\n{stderr.strip()}")
        self.args_list = list(args)
        self.returncode = returncode
        self.stderr = stderr


_AUTH_FILE: Path | None = None


def _skopeo_env() -> dict[str, str]:
    """Proxy-free env with an empty private auth file (no host credentials leak in)."""
    global _AUTH_FILE
    if _AUTH_FILE is None or not _AUTH_FILE.exists():
        fd, name = tempfile.mkstemp(prefix="skopeo-auth-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write('{"auths": {}}')
        _AUTH_FILE = Path(name)
        atexit.register(_AUTH_FILE.unlink, missing_ok=True)  # one per test process
    return clean_env({"REGISTRY_AUTH_FILE": str(_AUTH_FILE)})


def run_skopeo(
    args: Sequence[str], *, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``skopeo <args>`` with a clean env and a hard timeout.

    ``check=True`` raises ``SkopeoError`` on non-zero exit. On timeout the child is
    killed and ``subprocess.TimeoutExpired`` propagates.
    """
    cmd = [SKOPEO, *args]
    proc = subprocess.run(
        cmd,
        env=_skopeo_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise SkopeoError(cmd, proc.returncode, proc.stderr)
    return proc


def _docker_ref(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def _creds_args(prefix: str, creds: tuple[str, str] | None) -> list[str]:
    if creds is None:
        return []
    user, password = creds
    return [f"--{prefix}username={user}", f"--{prefix}password={password}"]


def push(
    image_or_index: Image | Index,
    registry_host: str,
    repo: str,
    tag: str,
    *,
    format: Literal["oci", "v2s2"] | None = None,
    creds: tuple[str, str] | None = None,
    timeout: float = 120.0,
) -> str:
    """Copy the layout image to ``docker://<registry_host>/<repo>:<tag>`` over plain HTTP.

    ``format="v2s2"`` converts to Docker schema2 (manifest list for an index).
    Indexes are always copied with ``--all``. OCI pushes use ``--preserve-digests``
    so the registry holds exactly the layout's manifest. Returns the top-level
    manifest digest the registry now holds (checked against a GET of the tag).
    """
    args = ["copy", "--retry-times=0", "--dest-tls-verify=false", *_creds_args("dest-", creds)]
    if isinstance(image_or_index, Index):
        args.append("--all")
    if format is not None:
        args.append(f"--format={format}")
    if format in (None, "oci"):
        args.append("--preserve-digests")
    with tempfile.TemporaryDirectory(prefix="skopeo-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        args += [
            f"--digestfile={digest_file}",
            image_or_index.oci_ref,
            f"docker://{registry_host}/{repo}:{tag}",
        ]
        run_skopeo(args, timeout=timeout)
        reported = digest_file.read_text().strip()
    held = fetch_manifest(registry_host, repo, tag, creds=creds)
    if held.digest != reported:
        raise AssertionError(
            f"skopeo reported {reported} but registry serves {held.digest} for {repo}:{tag}"
        )
    if format in (None, "oci") and held.digest != image_or_index.manifest_digest:
        raise AssertionError(
            f"OCI push changed the manifest: {image_or_index.manifest_digest} -> {held.digest}"
        )
    return held.digest


def inspect_raw(ref: str, *, creds: tuple[str, str] | None = None, timeout: float = 60.0) -> bytes:
    """``skopeo inspect --raw`` of a ``docker://`` ref (scheme optional); raw manifest bytes."""
    args = [
        "inspect",
        "--raw",
        "--retry-times=0",
        "--tls-verify=false",
        *_creds_args("", creds),
        _docker_ref(ref),
    ]
    # text=True would be lossy for exotic bytes; manifests are JSON (UTF-8), which round-trips.
    return run_skopeo(args, timeout=timeout).stdout.encode()


def pull_dir(
    src_ref: str,
    dest_dir: Path | str,
    *,
    creds: tuple[str, str] | None = None,
    all: bool = False,
    fmt: Literal["dir", "oci"] = "dir",
    check: bool = True,
    timeout: float = 120.0,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy docker://<src_ref> dir:<dest_dir>`` (or ``oci:``) over plain HTTP.

    ``src_ref`` is ``host/repo:tag`` or ``host/repo@digest`` (``docker://`` optional).
    ``dir:`` keeps manifests and blobs byte-for-byte; ``oci:`` converts schema2 to
    OCI. ``all=True`` copies every platform of an index. Raises ``SkopeoError``
    unless ``check=False``; the timeout kills skopeo and raises ``TimeoutExpired``.
    """
    args = ["copy", "--retry-times=0", "--src-tls-verify=false", *_creds_args("src-", creds)]
    if all:
        args.append("--all")
    if fmt == "oci":
        args.append("--dest-oci-accept-uncompressed-layers")
    args += [*extra_args, _docker_ref(src_ref), f"{fmt}:{dest_dir}"]
    return run_skopeo(args, timeout=timeout, check=check)


class BlobMismatch(AssertionError):
    """A file named after a digest does not hash to that digest."""


def blob_digests_in_dir(dest_dir: Path | str, *, verify: bool = True) -> dict[str, str]:
    """Map every digest-named file of a ``dir:`` or ``oci:`` copy to the sha256 of its bytes.

    Covers ``dir:`` blobs (``<hex>``), per-instance manifests (``<hex>.manifest.json``)
    and ``oci:`` ``blobs/sha256/<hex>``. With ``verify=True`` (default) raises
    ``BlobMismatch`` if any file's content does not match its name; then keys
    equal values and the keys are the verified digest set.
    """
    root = Path(dest_dir)
    found: dict[str, str] = {}
    candidates: list[tuple[str, Path]] = []
    for path in root.iterdir():
        name = path.name
        if name.endswith(".manifest.json"):
            name = name[: -len(".manifest.json")]
        if path.is_file() and _HEX64.match(name):
            candidates.append((name, path))
    oci_blobs = root / "blobs" / "sha256"
    if oci_blobs.is_dir():
        candidates += [
            (p.name, p) for p in oci_blobs.iterdir() if p.is_file() and _HEX64.match(p.name)
        ]
    bad: list[str] = []
    for hexd, path in candidates:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        actual = "sha256:" + h.hexdigest()
        found["sha256:" + hexd] = actual
        if actual != "sha256:" + hexd:
            bad.append(f"{path}: content is {actual}")
    if verify and bad:
        raise BlobMismatch("digest mismatch in " + str(root) + ":\n" + "\n".join(bad))
    return found


def manifest_digest_in_dir(dest_dir: Path | str) -> str:
    """Digest of the top-level ``manifest.json`` of a ``dir:`` copy."""
    return sha256_digest((Path(dest_dir) / "manifest.json").read_bytes())


# ---------------------------------------------------------------------------- registry HTTP


@dataclass
class RemoteManifest:
    """A manifest as served by a registry (or mirror)."""

    digest: str
    media_type: str
    raw: bytes = field(repr=False)
    header_digest: str | None = None

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def child_digests(self) -> list[str]:
        """Digests of platform manifests (index/list only, else empty)."""
        return [m["digest"] for m in self.json.get("manifests", [])] if self.is_index else []

    @property
    def blob_digests(self) -> list[str]:
        """Config + layer digests (image manifest only, else empty)."""
        if self.is_index:
            return []
        doc = self.json
        return [doc["config"]["digest"], *(layer["digest"] for layer in doc.get("layers", []))]


class ManifestFetchError(RuntimeError):
    """GET of a manifest did not return 200."""


def fetch_manifest(
    registry: str,
    repo: str,
    reference: str,
    *,
    creds: tuple[str, str] | None = None,
    accept: str = MANIFEST_ACCEPT,
    timeout: float = 10.0,
) -> RemoteManifest:
    """GET ``/v2/<repo>/manifests/<reference>`` from ``registry`` (``host:port`` or URL).

    ``digest`` is the sha256 of the body; ``header_digest`` the ``Docker-Content-Digest``
    header (if any). ``creds`` work for Basic and token-auth registries alike. Raises
    ``ManifestFetchError`` on a non-200 answer.
    """
    base = registry if "://" in registry else f"http://{registry}"
    resp = bearer_request(
        "GET",
        f"{base.rstrip('/')}/v2/{repo}/manifests/{reference}",
        headers={"Accept": accept},
        creds=creds,
        timeout=timeout,
    )
    if resp.status != 200:
        raise ManifestFetchError(
            f"GET manifest {repo}:{reference} -> {resp.status}: {resp.body[:300]!r}"
        )
    media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
    return RemoteManifest(
        digest=sha256_digest(resp.body),
        media_type=media_type,
        raw=resp.body,
        header_digest=resp.header("Docker-Content-Digest"),
    )


# ---------------------------------------------------------------------------- published images


@dataclass(frozen=True)
class PushedImage:
    """An image (or index) as held by a registry after ``publish()``.

    ``digest``/``media_type`` describe the top-level manifest on the registry;
    ``child_digests`` are the platform manifests of an index (empty otherwise);
    ``blob_digests`` are config + layer digests of every platform, as referenced by
    the registry's manifests (they may differ from ``source`` after a conversion).
    """

    registry_host: str
    repo: str
    tag: str
    digest: str
    media_type: str
    source: Image | Index = field(repr=False)
    child_digests: tuple[str, ...] = ()
    blob_digests: frozenset[str] = frozenset()
    raw_manifest: bytes = field(default=b"", repr=False)

    @property
    def ref(self) -> str:
        """``repo:tag``."""
        return f"{self.repo}:{self.tag}"

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def on(self, host: str, *, by_digest: bool = False) -> str:
        """``host/repo:tag`` (or ``host/repo@digest``): the image seen through ``host``."""
        return f"{host}/{self.repo}@{self.digest}" if by_digest else f"{host}/{self.ref}"

    @property
    def upstream_ref(self) -> str:
        """``registry_host/repo:tag`` of where it was pushed."""
        return self.on(self.registry_host)


def publish(
    image_or_index: Image | Index,
    registry_host: str,
    repo: str,
    tag: str,
    *,
    format: Literal["oci", "v2s2"] | None = None,
    creds: tuple[str, str] | None = None,
    timeout: float = 120.0,
) -> PushedImage:
    """``push()`` then read back the manifests to describe what the registry holds."""
    digest = push(
        image_or_index, registry_host, repo, tag, format=format, creds=creds, timeout=timeout
    )
    top = fetch_manifest(registry_host, repo, digest, creds=creds)
    blobs: set[str] = set(top.blob_digests)
    for child in top.child_digests:
        blobs |= set(fetch_manifest(registry_host, repo, child, creds=creds).blob_digests)
    return PushedImage(
        registry_host=registry_host,
        repo=repo,
        tag=tag,
        digest=digest,
        media_type=top.media_type,
        source=image_or_index,
        child_digests=tuple(top.child_digests),
        blob_digests=frozenset(blobs),
        raw_manifest=top.raw,
    )


@dataclass(frozen=True)
class ImageSet:
    """The images the ``images`` session fixture pushes to ``upstream`` (see conftest).

    * ``oci_small``: ``library/oci-small:v1``, OCI manifest, 2 gzip layers (1 MiB, 300 KiB).
    * ``schema2``: ``library/schema2:v1``, the same layout pushed as Docker schema2: a
      different manifest digest, but the same config and layer blobs as ``oci_small``.
    * ``multi``: ``library/multi:v1``, OCI index, linux/amd64 + linux/arm64, one
      uncompressed 256 KiB layer each.
    """

    upstream_host: str
    oci_small: PushedImage
    schema2: PushedImage
    multi: PushedImage

    def all(self) -> list[PushedImage]:
        return [self.oci_small, self.schema2, self.multi]


ImageFactory = Callable[..., PushedImage]
"""Type of the ``image_factory`` fixture."""
