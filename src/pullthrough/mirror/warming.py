"""The walk ``pullthrough warm`` and scheduled syncs share: an image's manifest by tag or
digest, then (for an index) each child manifest of the platforms asked for, then every blob
they reference, each object once per repository in a run, from a ``Source`` (a running
mirror over HTTP, or this process's own ``Mirror`` on the store)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from pullthrough.errors import RegistryError
from pullthrough.mirror.warm_images import (
    Got,
    ImageRef,
    Platform,
    Pulled,
    WarmError,
    blob_descriptors,
    child_manifests,
)
from pullthrough.mirror.warm_sources import Source
from pullthrough.progress import Reporter, human
from pullthrough.reference import Digest, parse_digest

# An index of indexes is legal; deeper than this is a loop or garbage.
MAX_DEPTH = 4


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
                report_error(ref, result, what=digest)
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


def report_error(ref: ImageRef, exc: Exception, *, what: str | None = None) -> None:
    where = f"{ref.text}: {what}" if what else ref.text
    if isinstance(exc, WarmError | RegistryError):
        code, message = exc.code, exc.message
    else:
        code, message = type(exc).__name__, str(exc)
    print(f"error: {where}: {code}: {message}", file=sys.stderr, flush=True)
