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
import sys
from typing import Any

import aiohttp

from pullthrough.commands.beside import config_and_words, config_may_be_a_word, start_mirror
from pullthrough.commands.progress import Reporter, human
from pullthrough.commands.warm_images import (
    Got,
    ImageRef,
    Platform,
    Pulled,
    WarmError,
    blob_descriptors,
    child_manifests,
    parse_image,
    parse_platform,
)
from pullthrough.commands.warm_sources import HttpSource, Source, StoreSource
from pullthrough.config import Config, ConfigError
from pullthrough.errors import RegistryError
from pullthrough.reference import Digest, parse_digest

DEFAULT_JOBS = 4
DEFAULT_TIMEOUT = 60.0
# An index of indexes is legal; deeper than this is a loop or garbage.
MAX_DEPTH = 4


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
    config_may_be_a_word(parser)
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


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        config, texts = config_and_words(config, args, list(args.images))
    except ConfigError as exc:
        print(f"pullthrough: config error: {exc}", file=sys.stderr)
        return 2
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
        started = await start_mirror(
            config, "if it is this mirror, warm through it with --mirror {url}"
        )
        if isinstance(started, int):
            return started
        mirror = started
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
