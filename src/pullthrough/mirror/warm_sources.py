"""Where ``pullthrough warm`` gets manifests and blobs: a running mirror over HTTP (as a client
would), or the mirror's own policy run in this process on the config's store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import aiohttp

from pullthrough.errors import RegistryError
from pullthrough.manifest import KNOWN_TYPES, MAX_MANIFEST_SIZE, detect_media_type
from pullthrough.mirror.warm_images import Got, ImageRef, Pulled, WarmError
from pullthrough.reference import Digest, is_digest, parse_digest

if TYPE_CHECKING:
    # The CLI imports every command module to build its parser, for every command
    # including serve: the mirror (metrics, upstream clients) is imported when warm runs.
    from pullthrough.mirror.route import Route
    from pullthrough.mirror.service import Mirror

# How often direct warming looks at a fetch's progress (for the bar and the stall check).
POLL = 0.2


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
    """The mirror's own policy, in this process, on the config's store: ``mirror.policy``
    refuses here what it refuses a client (DENIED), before the upstream is asked."""

    def __init__(
        self, mirror: Mirror, timeout: float, resolve: Callable[[ImageRef], Route]
    ) -> None:
        self.mirror = mirror
        self.timeout = timeout
        # How an image's name finds its upstream and repository: for ``warm``, the server's
        # own routing (what is stored here is what it will look up), handed in by the command.
        self._route = resolve

    async def manifest(self, ref: ImageRef, reference: str) -> Got:
        route = self._route(ref)
        manifests = self.mirror.manifests
        if is_digest(reference):
            digest = parse_digest(reference)
            await self.mirror.permit(route.upstream.name, route.repo, ref.name, digest=str(digest))
            call = manifests.by_digest(route.upstream, route.repo, digest)
        else:
            await self.mirror.permit(route.upstream.name, route.repo, ref.name, tag=reference)
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
        await self.mirror.permit(route.upstream.name, route.repo, ref.name)
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
