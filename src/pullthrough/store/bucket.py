"""The bucket behind ``storage.s3``: verified blobs as objects, one per digest.

Keys follow distribution's layout (``<rootdirectory>/docker/registry/v2/blobs/<algorithm>/
<2 hex>/<hex>/data``), so a bucket's blobs mean the same to both and the index can be
rebuilt from a listing. An object is written only from a local file whose digest was
already verified (``store.blobs``), as one multipart upload that becomes visible when it is
completed; obstore aborts the upload when it fails, and nothing else ever writes a key.

The client is obstore (Rust's object_store): uploads, ranged reads, listings and presigned
URLs with the AWS credential chain, the GIL released while bytes move, 13 MB installed and
no Python dependencies (aiobotocore with botocore adds 36 MB to the image). Imported only
when ``storage.s3`` is configured: a filesystem store never loads obstore (its runtime's
threads are then not there at all, nor at exit).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from pullthrough.config.aws_profile import with_profile_keys
from pullthrough.config.model import S3Config
from pullthrough.errors import BucketUnavailable
from pullthrough.reference import Digest, parse_digest

if TYPE_CHECKING:  # obstore's option types exist only in its stubs
    from obstore.store import ClientConfig
    from obstore.store import S3Config as StoreConfig

log = logging.getLogger(__name__)

BLOBS = "docker/registry/v2/blobs"
# What obstore raises: its own errors, and builtins for some statuses (404 as
# FileNotFoundError, 403 as PermissionError) and for the network (ConnectionError, time-outs).
ERRORS = (BaseError, OSError)
# Parts of one upload in flight at once: memory is about this many parts.
UPLOAD_PARTS_IN_FLIGHT = 4


@dataclass(frozen=True, slots=True)
class BucketObject:
    digest: str
    size: int
    modified: float  # seconds since the epoch
    etag: str | None


class Bucket:
    """One bucket (and prefix) of an S3-compatible service."""

    def __init__(self, config: S3Config) -> None:
        config = with_profile_keys(config)  # no keys given: perhaps ~/.aws/credentials
        self.config = config
        self._blobs = f"{config.prefix}/{BLOBS}" if config.prefix else BLOBS
        self._store = S3Store(
            config.bucket,
            config=cast("StoreConfig", _store_config(config)),
            client_options=cast("ClientConfig", _client_options(config)),
            retry_config={
                "max_retries": 5,
                "retry_timeout": timedelta(seconds=60),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=10),
                    "base": 2,
                },
            },
        )
        self._attributes: dict[Any, str] = (
            {"Storage-Class": config.storage_class} if config.storage_class else {}
        )

    def key(self, digest: Digest) -> str:
        # The digest was validated by reference.parse_digest: the key cannot leave the prefix.
        return f"{self._blobs}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"

    async def upload(self, digest: Digest, path: Path, size: int) -> None:
        """Upload the verified file at ``path`` as ``digest``'s object (multipart above one
        part: ``storage.s3.chunksize`` each, a few in flight)."""
        try:
            await obstore.put_async(
                self._store,
                self.key(digest),
                path,
                attributes=self._attributes or None,
                use_multipart=size > self.config.chunk_size,
                chunk_size=self.config.chunk_size,
                max_concurrency=UPLOAD_PARTS_IN_FLIGHT,
            )
        except ERRORS as exc:
            raise _unavailable("upload", digest, exc) from None

    async def put(self, digest: Digest, data: bytes) -> None:
        """A small verified blob (a manifest) in one request."""
        try:
            await obstore.put_async(
                self._store, self.key(digest), data, attributes=self._attributes or None
            )
        except ERRORS as exc:
            raise _unavailable("upload", digest, exc) from None

    def put_sync(self, digest: Digest, data: bytes) -> None:
        """``put`` for a caller in a worker thread (the store's manifest writes)."""
        try:
            obstore.put(self._store, self.key(digest), data, attributes=self._attributes or None)
        except ERRORS as exc:
            raise _unavailable("upload", digest, exc) from None

    def read_sync(self, digest: Digest, limit: int) -> bytes | None:
        """``read`` for a caller in a worker thread (the store's manifest reads)."""
        try:
            meta = obstore.head(self._store, self.key(digest))
            if meta["size"] > limit:
                raise BucketUnavailable(f"object of {digest} is {meta['size']} bytes")
            return bytes(obstore.get(self._store, self.key(digest)).bytes())
        except (NotFoundError, FileNotFoundError):
            return None
        except ERRORS as exc:
            raise _unavailable("read", digest, exc) from None

    async def stream(self, digest: Digest) -> AsyncIterator[memoryview]:
        """The object's bytes in chunks of 8 MiB or so; nothing if there is no object."""
        try:
            result = await obstore.get_async(self._store, self.key(digest))
            async for chunk in result.stream(min_chunk_size=8 * 1024 * 1024):
                yield memoryview(chunk)
        except (NotFoundError, FileNotFoundError):
            return
        except ERRORS as exc:
            raise _unavailable("read", digest, exc) from None

    async def delete(self, digest: Digest) -> None:
        """Delete the object (nothing when there is none)."""
        try:
            await obstore.delete_async(self._store, self.key(digest))
        except (NotFoundError, FileNotFoundError):
            pass
        except ERRORS as exc:
            raise _unavailable("delete", digest, exc) from None

    async def presign(self, digest: Digest) -> str:
        """A URL a client can GET the object from, for ``mirror.s3.redirect_expiry``."""
        try:
            return await obstore.sign_async(
                self._store,
                "GET",
                self.key(digest),
                timedelta(seconds=self.config.redirect_expiry),
            )
        except ERRORS as exc:
            raise _unavailable("sign a URL for", digest, exc) from None

    def _own(self, name: str) -> str:
        """A key of pullthrough's own beside the blobs (never a digest's)."""
        return f"{self.config.prefix}/pullthrough/{name}" if self.config.prefix else (
            f"pullthrough/{name}"
        )

    async def put_file(self, name: str, path: Path) -> None:
        """Upload ``path`` as pullthrough's own object ``name`` (the index snapshot)."""
        try:
            await obstore.put_async(
                self._store,
                self._own(name),
                path,
                chunk_size=self.config.chunk_size,
                max_concurrency=UPLOAD_PARTS_IN_FLIGHT,
            )
        except ERRORS as exc:
            raise BucketUnavailable(f"cannot upload {name}: {_reason(exc)}") from None

    async def get_file(self, name: str, path: Path) -> bool:
        """Download pullthrough's own object ``name`` into ``path``; False if there is none."""
        try:
            result = await obstore.get_async(self._store, self._own(name))
            out = await asyncio.to_thread(path.open, "wb")
            try:
                async for chunk in result.stream(min_chunk_size=8 * 1024 * 1024):
                    await asyncio.to_thread(out.write, memoryview(chunk))
            finally:
                await asyncio.to_thread(out.close)
        except (NotFoundError, FileNotFoundError):
            return False
        except ERRORS as exc:
            raise BucketUnavailable(f"cannot download {name}: {_reason(exc)}") from None
        return True

    async def objects(self) -> AsyncIterator[BucketObject]:
        """Every blob object under the prefix; keys that name no digest are skipped."""
        stream = obstore.list(self._store, self._blobs + "/", chunk_size=1000)
        try:
            async for batch in stream:
                for meta in batch:
                    digest = self._digest_of(meta["path"])
                    if digest is not None:
                        yield BucketObject(
                            digest, meta["size"], meta["last_modified"].timestamp(), meta["e_tag"]
                        )
        except ERRORS as exc:
            raise BucketUnavailable(f"cannot list the bucket: {_reason(exc)}") from None

    def _digest_of(self, key: str) -> str | None:
        """``sha256:<hex>`` for ``<blobs>/sha256/<2>/<hex>/data``, None for anything else
        (a listing is untrusted input: any key may be there)."""
        rest = key.removeprefix(self._blobs + "/")
        parts = rest.split("/")
        if rest == key or len(parts) != 4 or parts[3] != "data" or parts[2][:2] != parts[1]:
            return None
        try:
            return str(parse_digest(f"{parts[0]}:{parts[2]}"))
        except ValueError:
            return None

    async def check_access(self) -> None:
        """Raises BucketUnavailable unless the bucket can be listed (the server's start:
        wrong credentials or a missing bucket are a configuration error, said at once)."""
        try:
            await asyncio.wait_for(
                _first(obstore.list(self._store, self._blobs + "/", chunk_size=1)), 30
            )
        except ERRORS as exc:
            raise BucketUnavailable(
                f"bucket {self.config.bucket} at {self.config.endpoint} cannot be listed: "
                f"{_reason(exc)}"
            ) from None

    async def probe(self) -> list[str]:
        """What ``pullthrough check`` says of the bucket: whether it can list, write, read
        back and delete (a small object under the prefix), one line each."""
        lines: list[str] = []
        probe = (
            f"{self.config.prefix}/pullthrough-check"
            if self.config.prefix
            else ("pullthrough-check")
        )
        steps: list[tuple[str, Any]] = [
            ("list", lambda: _first(obstore.list(self._store, self._blobs + "/", chunk_size=1))),
            ("write", lambda: obstore.put_async(self._store, probe, b"pullthrough")),
            ("read", lambda: _read(self._store, probe)),
            ("delete", lambda: obstore.delete_async(self._store, probe)),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), 30)
            except ERRORS as exc:
                lines.append(f"  {name}: FAILED: {_reason(exc)}")
                raise BucketUnavailable("\n".join(lines)) from None
            lines.append(f"  {name}: ok")
        return lines


async def _first(stream: Any) -> None:
    async for _ in stream:
        break


async def _read(store: S3Store, key: str) -> None:
    result = await obstore.get_async(store, key)
    await result.bytes_async()


def _store_config(config: S3Config) -> dict[str, Any]:
    out: dict[str, Any] = {
        "region": config.region,
        "endpoint": config.endpoint,
        "virtual_hosted_style_request": not config.path_style,
    }
    if config.access_key is not None:
        out["access_key_id"] = config.access_key
        out["secret_access_key"] = config.secret_key
    if config.session_token:
        out["session_token"] = config.session_token
    if config.encrypt:
        out["server_side_encryption"] = "aws:kms" if config.kms_key_id else "AES256"
        if config.kms_key_id:
            out["sse_kms_key_id"] = config.kms_key_id
    return out


def _client_options(config: S3Config) -> dict[str, Any]:
    out: dict[str, Any] = {
        "allow_http": config.endpoint.startswith("http://"),
        "allow_invalid_certificates": not config.verify_tls,
        "connect_timeout": timedelta(seconds=5),
        "timeout": timedelta(minutes=30),  # a whole multipart upload of a large layer
    }
    if config.user_agent:
        out["user_agent"] = config.user_agent
    return out


_STATUS = re.compile(r"status code: (\d{3}[^:<]*)")
_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")


def _reason(exc: BaseException) -> str:
    """What went wrong, short: the HTTP status and S3's error code and message when the
    service answered, else the first line of obstore's error. Never the rest of it: it
    repeats the request (a presigned URL carries a signature) and the service's whole
    answer (which may name the access key)."""
    text = str(exc)
    status, code, message = _STATUS.search(text), _CODE.search(text), _MESSAGE.search(text)
    if status is not None:
        parts = [status.group(1).strip()]
        parts += [m.group(1) for m in (code, message) if m is not None]
        return ": ".join(parts)
    lines = text.strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first.split(" http", 1)[0][:300]


def _unavailable(action: str, digest: Digest, exc: BaseException) -> BucketUnavailable:
    log.warning("bucket: cannot %s %s: %s", action, digest, _reason(exc))
    return BucketUnavailable(f"the storage bucket could not {action} {digest}")
