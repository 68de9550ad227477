"""``pullthrough warm [CONFIG] IMAGE... [--platform OS/ARCH] [--mirror URL]``: prefetch images.

Each image's manifest is fetched by tag (or digest), then, for an index, each child
manifest (only those of the ``--platform`` asked for, if any), then every blob they
reference. Two ways:

* ``--mirror http://host:port`` pulls through a running mirror over HTTP, exactly as a
  client would (one ``Accept`` line naming every manifest type; bodies read to the end
  and discarded, each blob's digest checked while it streams), so the mirror stores it.
* Without ``--mirror`` it runs the mirror's own policy in this process on the config's
  store (``Mirror(config)``): for a mirror that is stopped, or to fill a store before the
  first start. The store's temp files are cleared at start-up, which would break a running
  server's downloads, so this refuses when the config's address answers as a registry.

Image references: ``alpine:3.19`` and ``library/alpine`` (Docker Hub rules on the upstream
named docker.io), ``ghcr.io/org/app:v1`` (a first component with a dot or a port names a
configured upstream; ``docker.io/...`` names the ``proxy:`` upstream), ``name@sha256:...``.

Output: a progress display on a terminal; otherwise one ``pulled <digest> <bytes>`` line per
object (``(cached)`` appended when direct warming found it stored already). Exit 1 when any
image or object failed, each failure named with the registry's error code and message.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from pullthrough.commands.progress import Reporter, human
from pullthrough.config import Config, ConfigError, load
from pullthrough.errors import RegistryError
from pullthrough.manifest import INDEX_TYPES, KNOWN_TYPES, MAX_MANIFEST_SIZE, detect_media_type
from pullthrough.reference import (
    Digest,
    is_digest,
    parse_digest,
    validate_name,
    validate_tag,
)

if TYPE_CHECKING:
    # The CLI imports every command module to build its parser, for every command
    # including serve: the mirror (metrics, upstream clients) is imported when warm runs.
    from pullthrough.mirror.service import Mirror
    from pullthrough.server.routing import Route

DEFAULT_JOBS = 4
DEFAULT_TIMEOUT = 60.0
# How often direct warming looks at a fetch's progress (for the bar and the stall check).
POLL = 0.2
# An index of indexes is legal; deeper than this is a loop or garbage.
MAX_DEPTH = 4
# Layers a registry is not allowed to hand out (Windows base layers): clients fetch them
# from the URLs in the descriptor, never from the registry, so neither do we.
NON_DISTRIBUTABLE = ("foreign", "nondistributable")


class WarmError(Exception):
    """A failure as the user sees it: an OCI error code and its message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- image references and platforms --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageRef:
    text: str  # as the user wrote it
    registry: str | None  # the registry host the reference names; None: the default upstream
    name: str  # the repository path on that registry
    tag: str | None
    digest: Digest | None

    @property
    def reference(self) -> str:
        """What to ask for: the digest when pinned (a tag next to it is only a label)."""
        return str(self.digest) if self.digest else (self.tag or "latest")


def parse_image(text: str) -> ImageRef:
    """Parse an image reference the way docker does; raises RegistryError (NAME_INVALID,
    TAG_INVALID, DIGEST_INVALID) for anything malformed."""
    rest, at, digest_text = text.partition("@")
    digest = parse_digest(digest_text) if at else None
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a colon before the last slash is a registry's port
        rest, tag = rest[:colon], validate_tag(rest[colon + 1 :])
    from pullthrough.mirror.upstreams import DOCKER_HUB_ALIASES

    registry: str | None = None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first.lower(), remainder
        if registry in DOCKER_HUB_ALIASES:
            registry = "docker.io"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(text, registry, validate_name(rest), tag, digest)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, entry: Any) -> bool:
        if not isinstance(entry, dict):
            return False
        return (
            entry.get("os") == self.os
            and entry.get("architecture") == self.architecture
            and (self.variant is None or entry.get("variant") == self.variant)
        )


def parse_platform(text: str) -> Platform:
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(f"expected OS/ARCH[/VARIANT] (linux/arm64), got {text!r}")
    return Platform(*parts)


# --- manifests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Got:
    """A manifest as received, its digest checked."""

    digest: str
    media_type: str
    body: bytes
    stale: bool = False  # direct warming: the upstream could not be asked, the cache answered

    def document(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WarmError("MANIFEST_INVALID", f"manifest {self.digest} is not JSON") from exc
        if not isinstance(doc, dict):
            raise WarmError("MANIFEST_INVALID", f"manifest {self.digest} is not a JSON object")
        return doc

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or "manifests" in self.document()


def child_manifests(got: Got) -> list[tuple[str, Any]]:
    """(digest, platform) of each entry of an index."""
    entries = got.document().get("manifests")
    if not isinstance(entries, list):
        return []
    return [
        (e["digest"], e.get("platform"))
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("digest"), str)
    ]


def blob_descriptors(got: Got) -> list[tuple[str, int | None]]:
    """(digest, size) of an image manifest's config, layers and (artifact) blobs: the same
    set as ``pullthrough.manifest.children`` plus sizes, minus non-distributable layers."""
    doc = got.document()
    found: list[tuple[str, int | None]] = []
    entries: list[Any] = [doc.get("config")]
    for key in ("layers", "blobs"):
        value = doc.get(key)
        if isinstance(value, list):
            entries.extend(value)
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        media_type = str(entry.get("mediaType", ""))
        if any(word in media_type for word in NON_DISTRIBUTABLE):
            continue
        size = entry.get("size")
        found.append((entry["digest"], size if isinstance(size, int) and size >= 0 else None))
    return found


# --- where the bytes come from -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pulled:
    size: int
    cached: bool = False  # direct warming found it stored already


class Source(Protocol):
    async def manifest(self, ref: ImageRef, reference: str) -> Got: ...

    async def blob(
        self, ref: ImageRef, digest: Digest, size: int | None, progress: Callable[[int], None]
    ) -> Pulled: ...

    async def close(self) -> None: ...


class HttpSource:
    """Pulls through a running mirror, as a client would."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout
        # Each connect and each read is bounded; a blob as a whole may take as long as it
        # keeps moving. Raw bytes (no decompression): the digest is of the bytes as stored.
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            auto_decompress=False,
            trust_env=False,
        )

    def _target(self, ref: ImageRef, kind: str, reference: str) -> tuple[str, dict[str, str]]:
        # A named registry travels as containerd's ?ns=, which the mirror routes by name or
        # host (and refuses, with a how-to, when it mirrors no such registry).
        params = {"ns": ref.registry} if ref.registry else {}
        return f"{self.base}/v2/{ref.name}/{kind}/{reference}", params

    async def manifest(self, ref: ImageRef, reference: str) -> Got:
        url, params = self._target(ref, "manifests", reference)
        try:
            async with self.session.get(
                url,
                params=params,
                headers={"Accept": ", ".join(KNOWN_TYPES)},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status != 200:
                    raise await _error_of(resp)
                body, whole = await _read_upto(resp, MAX_MANIFEST_SIZE)
                if not whole:
                    raise WarmError(
                        "MANIFEST_INVALID", f"{ref.name}:{reference} is too big to be a manifest"
                    )
                header_type = resp.headers.get("Content-Type")
                header_digest = resp.headers.get("Docker-Content-Digest")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        expected = (
            parse_digest(reference) if is_digest(reference) else _digest_or_none(header_digest)
        )
        algorithm = expected.algorithm if expected else "sha256"
        actual = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
        if expected is not None and actual != expected:
            raise WarmError(
                "DIGEST_INVALID",
                f"the mirror sent a manifest for {ref.name}:{reference} whose digest is "
                f"{actual}, not {expected}",
            )
        media_type = (header_type or "").split(";", 1)[0].strip()
        if media_type not in KNOWN_TYPES:
            media_type = detect_media_type(body, header_type)
        return Got(str(actual), media_type, body)

    async def blob(
        self, ref: ImageRef, digest: Digest, size: int | None, progress: Callable[[int], None]
    ) -> Pulled:
        url, params = self._target(ref, "blobs", str(digest))
        hasher = hashlib.new(digest.algorithm)
        received = 0
        try:
            async with self.session.get(url, params=params) as resp:
                if resp.status != 200:
                    raise await _error_of(resp)
                async for chunk in resp.content.iter_any():
                    hasher.update(chunk)
                    received += len(chunk)
                    progress(len(chunk))
        except aiohttp.ClientPayloadError as exc:
            # The mirror's only way to say "the bytes turned out wrong" once headers are out.
            raise WarmError(
                "BLOB_TRANSFER_ABORTED",
                f"the mirror broke off {digest} after {received} bytes (its fetch from the "
                f"upstream failed; the mirror's log says why): {exc}",
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        if hasher.hexdigest() != digest.hex:
            raise WarmError(
                "DIGEST_INVALID", f"the mirror sent bytes for {digest} that do not match it"
            )
        if size is not None and received != size:
            raise WarmError(
                "SIZE_INVALID",
                f"the mirror sent {received} bytes of {digest}, the manifest says {size}",
            )
        return Pulled(received)

    def _unreachable(self, exc: BaseException) -> WarmError:
        what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return WarmError("UNAVAILABLE", f"talking to the mirror at {self.base}: {what}")

    async def close(self) -> None:
        await self.session.close()


class StoreSource:
    """The mirror's own policy, in this process, on the config's store."""

    def __init__(self, mirror: Mirror, timeout: float) -> None:
        self.mirror = mirror
        self.timeout = timeout

    def _route(self, ref: ImageRef) -> Route:
        from pullthrough.server.routing import resolve

        # The server's own routing: what is stored here is what it will look up.
        return resolve(self.mirror, ref.name, ref.registry)

    async def manifest(self, ref: ImageRef, reference: str) -> Got:
        route = self._route(ref)
        manifests = self.mirror.manifests
        if is_digest(reference):
            call = manifests.by_digest(route.upstream, route.repo, parse_digest(reference))
        else:
            call = manifests.by_tag(route.upstream, route.repo, reference, KNOWN_TYPES)
        try:
            found = await asyncio.wait_for(call, self.timeout)
        except TimeoutError as exc:
            raise WarmError(
                "UNAVAILABLE", f"no answer for {ref.name}:{reference} in {self.timeout:g}s"
            ) from exc
        return Got(found.digest, found.media_type, found.body, stale=found.stale)

    async def blob(
        self, ref: ImageRef, digest: Digest, size: int | None, progress: Callable[[int], None]
    ) -> Pulled:
        route = self._route(ref)
        try:
            body = await asyncio.wait_for(
                self.mirror.blobs.get(route.upstream, route.repo, digest), self.timeout
            )
        except TimeoutError as exc:
            raise WarmError("UNAVAILABLE", f"no answer for {digest} in {self.timeout:g}s") from exc
        if body.cached is not None:
            body.cached.close()
            progress(body.cached.size)
            return Pulled(body.cached.size, cached=True)
        fetch = body.fetch
        assert fetch is not None, "a BlobBody is a file or a fetch"
        if body.tap is not None:
            # We never read the bytes, the store gets them from the fetch itself; a tap
            # nobody drains would hold the download back once the disk is full.
            fetch.detach(body.tap)
        reported = 0
        moved = time.monotonic()
        while True:
            not_kept = WarmError(
                "NOT_STORED",
                f"the store cannot keep {digest} (disk full, or over mirror.maxsize with "
                "nothing left to evict)",
            )
            if fetch.spilled_at is not None:
                raise not_kept
            try:
                await asyncio.wait_for(fetch.wait_verified(), POLL)
                done = True
            except TimeoutError:
                done = False
            except RegistryError:
                if fetch.spilled_at is not None:
                    raise not_kept from None
                raise
            if fetch.written > reported:
                progress(fetch.written - reported)
                reported, moved = fetch.written, time.monotonic()
            if done:
                if fetch.spilled_at is not None:
                    raise not_kept
                return Pulled(fetch.written)
            if time.monotonic() - moved > self.timeout:
                raise WarmError(
                    "UNAVAILABLE",
                    f"the fetch of {digest} made no progress for {self.timeout:g}s "
                    f"(at {fetch.written} bytes)",
                )

    async def close(self) -> None:
        await self.mirror.stop()


async def _error_of(resp: aiohttp.ClientResponse) -> WarmError:
    """The OCI error in a response body, or the status when there is none."""
    raw, _ = await _read_upto(resp, 64 * 1024)
    try:
        first = json.loads(raw)["errors"][0]
        return WarmError(str(first.get("code", "UNKNOWN")), str(first.get("message", "")))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        text = raw.decode("utf-8", "replace").strip()[:200] or resp.reason or ""
        return WarmError(f"HTTP_{resp.status}", text)


async def _read_upto(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether that was all of it."""
    chunks: list[bytes] = []
    held = 0
    async for chunk in resp.content.iter_any():
        if held + len(chunk) > limit:
            chunks.append(chunk[: limit - held])
            return b"".join(chunks), False
        chunks.append(chunk)
        held += len(chunk)
    return b"".join(chunks), True


def _digest_or_none(text: str | None) -> Digest | None:
    if not text:
        return None
    try:
        return parse_digest(text.strip())
    except RegistryError:
        return None


# --- the walk ------------------------------------------------------------------------------


class Warmer:
    def __init__(
        self,
        source: Source,
        reporter: Reporter,
        *,
        platforms: list[Platform],
        jobs: int,
    ) -> None:
        self.source = source
        self.reporter = reporter
        self.platforms = platforms
        self.jobs = asyncio.Semaphore(jobs)
        # (registry, repository, digest) already warmed in this run: several images often
        # share base layers. Per repository, since the mirror serves a blob per repository.
        self.done: set[tuple[str | None, str, str]] = set()

    async def image(self, ref: ImageRef) -> bool:
        """Warm one image; False if any part failed (each failure already said)."""
        top = await self.source.manifest(ref, ref.reference)
        if ref.digest is not None and top.digest != str(ref.digest):
            raise WarmError("DIGEST_INVALID", f"got manifest {top.digest} for {ref.text}")
        self._pulled(top.digest, len(top.body), stale=top.stale)
        fetched = [top]  # every manifest of the image, for the total
        images = await self._images(ref, top, fetched, depth=0)
        blobs: dict[str, int | None] = {}
        for image in images:
            for digest, size in blob_descriptors(image):
                blobs.setdefault(digest, size)
        todo = {d: s for d, s in blobs.items() if (ref.registry, ref.name, d) not in self.done}
        overall = self.reporter.add(ref.text, sum(s or 0 for s in todo.values()))
        results = await asyncio.gather(
            *(self._blob(ref, parse_digest(d), s, overall) for d, s in sorted(todo.items())),
            return_exceptions=True,
        )
        self.reporter.remove(overall)
        failed = 0
        total = sum(len(m.body) for m in fetched)
        for digest, result in zip(sorted(todo), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation, KeyboardInterrupt: not a failed blob
                failed += 1
                _error(ref, result, what=digest)
            else:
                self.done.add((ref.registry, ref.name, digest))
                total += result.size
        kind = f"{len(images)} image{'s' if len(images) != 1 else ''}"
        if failed:
            print(
                f"failed {ref.text} ({top.digest}): {failed} of {len(todo)} blobs",
                file=sys.stderr,
            )
            return False
        self.reporter.line(
            f"warmed {ref.text} ({top.digest}): {kind}, {len(blobs)} blobs, {human(total)}"
        )
        return True

    async def _images(self, ref: ImageRef, got: Got, fetched: list[Got], depth: int) -> list[Got]:
        """The image manifests under ``got`` (itself, unless it is an index); every
        manifest fetched on the way is added to ``fetched``."""
        if not got.is_index:
            return [got]
        if depth >= MAX_DEPTH:
            raise WarmError("MANIFEST_INVALID", f"indexes nested deeper than {MAX_DEPTH}")
        entries = child_manifests(got)
        chosen = [
            digest
            for digest, platform in entries
            if not self.platforms or any(p.matches(platform) for p in self.platforms)
        ]
        if not chosen:
            offered = sorted(
                {_platform_text(p) for _, p in entries if isinstance(p, dict)} or {"none"}
            )
            raise WarmError(
                "MANIFEST_UNKNOWN",
                f"{ref.text} has no manifest for {', '.join(map(str, self.platforms))} "
                f"(it has: {', '.join(offered)})",
            )
        images: list[Got] = []
        for digest in chosen:
            child = await self.source.manifest(ref, digest)
            self._pulled(child.digest, len(child.body), stale=child.stale)
            fetched.append(child)
            images.extend(await self._images(ref, child, fetched, depth + 1))
        return images

    async def _blob(self, ref: ImageRef, digest: Digest, size: int | None, overall: Any) -> Pulled:
        async with self.jobs:
            bar = self.reporter.add(f"  {digest.hex[:12]}", size)

            def progress(count: int) -> None:
                self.reporter.advance(bar, count)
                self.reporter.advance(overall, count)

            try:
                pulled = await self.source.blob(ref, digest, size, progress)
            finally:
                self.reporter.remove(bar)
            self._pulled(str(digest), pulled.size, cached=pulled.cached)
            return pulled

    def _pulled(self, digest: str, size: int, *, cached: bool = False, stale: bool = False) -> None:
        note = " (cached)" if cached else ""
        if stale:
            note = " (cached; the upstream could not be asked whether the tag moved)"
        self.reporter.line(f"pulled {digest} {size}{note}")


def _platform_text(platform: dict[str, Any]) -> str:
    parts = (platform.get("os"), platform.get("architecture"), platform.get("variant"))
    return "/".join(str(p) for p in parts if p)


def _error(ref: ImageRef, exc: Exception, *, what: str | None = None) -> None:
    where = f"{ref.text}: {what}" if what else ref.text
    if isinstance(exc, WarmError | RegistryError):
        code, message = exc.code, exc.message
    else:
        code, message = type(exc).__name__, str(exc)
    print(f"error: {where}: {code}: {message}", file=sys.stderr, flush=True)


# --- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _config_may_be_an_image(parser)
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="e.g. alpine:3.19, ghcr.io/org/app:v1, name@sha256:...",
    )
    parser.add_argument(
        "--platform",
        action="append",
        type=parse_platform,
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="of an index, warm only this platform's image (repeatable; default: all)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="pull through the mirror running at URL (http://host:port) instead of "
        "filling the config's store directly",
    )
    parser.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help="blobs pulled at once (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a connect, a manifest or a stalled blob may take (default: %(default)s)",
    )


def _config_may_be_an_image(parser: argparse.ArgumentParser) -> None:
    """``pullthrough.cli`` gives every command an optional CONFIG positional ahead of its
    own; followed by IMAGE..., argparse reads ``warm alpine busybox`` as CONFIG=alpine and
    the CLI then fails to load ``alpine`` as a config. So CONFIG is parsed under another
    name here (the CLI loads the embedded default), and ``run`` decides whether it is a
    config file or the first image."""
    for action in parser._actions:  # argparse has no public way to find an added action
        if action.dest == "config":
            action.dest = "config_or_image"
            action.metavar = "CONFIG"
    parser.set_defaults(config=None)


def _is_config(text: str) -> bool:
    return text.endswith((".yml", ".yaml")) or Path(text).is_file()


def run(config: Config, args: argparse.Namespace) -> int:
    texts = list(args.images)
    first: str | None = getattr(args, "config_or_image", None)
    if first is not None:
        if _is_config(first):
            try:
                config = load(first)
            except ConfigError as exc:
                print(f"pullthrough: config error: {exc}", file=sys.stderr)
                return 2
        else:
            texts.insert(0, first)
    refs: list[ImageRef] = []
    for text in texts:
        try:
            refs.append(parse_image(text))
        except RegistryError as exc:
            print(f"error: {text}: {exc.code}: {exc.message}", file=sys.stderr)
    if len(refs) != len(texts):
        return 2
    return asyncio.run(
        warm(
            config,
            refs,
            platforms=args.platform,
            mirror_url=args.mirror,
            jobs=max(1, args.jobs),
            time_limit=max(1.0, args.timeout),
        )
    )


async def warm(
    config: Config,
    refs: list[ImageRef],
    *,
    platforms: list[Platform],
    mirror_url: str | None,
    jobs: int,
    time_limit: float,
) -> int:
    source: Source
    if mirror_url is not None:
        if not mirror_url.startswith(("http://", "https://")):
            print(f"error: --mirror {mirror_url}: expected http://host:port", file=sys.stderr)
            return 2
        source = HttpSource(mirror_url, time_limit)
    else:
        running = await _server_answering(config)
        if running is not None:
            print(
                f"error: a registry answers at {running}, the address in this config: if it "
                f"is this mirror, warm through it with --mirror {running} (filling its store "
                "from a second process would delete its downloads in progress)",
                file=sys.stderr,
            )
            return 2
        from pullthrough.mirror.service import Mirror

        mirror = Mirror(config)
        try:
            await mirror.start()
        except (OSError, sqlite3.Error) as exc:
            print(f"error: cannot open the store in {config.root}: {exc}", file=sys.stderr)
            await mirror.stop()
            return 1
        source = StoreSource(mirror, time_limit)
    failures = 0
    try:
        with Reporter() as reporter:
            warmer = Warmer(source, reporter, platforms=platforms, jobs=jobs)
            for ref in refs:
                try:
                    if not await warmer.image(ref):
                        failures += 1
                except (WarmError, RegistryError, aiohttp.ClientError, OSError) as exc:
                    failures += 1
                    _error(ref, exc)
    finally:
        await source.close()
    return 1 if failures else 0


async def _server_answering(config: Config) -> str | None:
    """The base URL of a registry answering at the config's address, if one does."""
    host = config.host if config.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    base = f"{'https' if config.tls_certificate else 'http'}://{host}:{config.port}"
    try:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(f"{base}/v2/", ssl=False, timeout=aiohttp.ClientTimeout(total=2.0)) as resp,
        ):
            answered = "Docker-Distribution-API-Version" in resp.headers
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return base if answered else None
