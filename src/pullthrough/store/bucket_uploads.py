"""Multipart uploads a crash left in the bucket, found and aborted.

An upload that fails is aborted by obstore itself; one whose process died half-way stays,
invisible but billed, until someone aborts it. obstore has no call to list them, so the
two requests needed (ListMultipartUploads, AbortMultipartUpload) are made here, signed
with AWS Signature Version 4 from the configured keys. Without keys (the AWS credential
chain) there is nothing to sign with: the bucket's lifecycle rule
(``AbortIncompleteMultipartUpload``) is then the way, and the sweep says so once.

Only uploads under the mirror's own keys (its ``rootdirectory``) are touched, and only
those started longer ago than any upload of ours could still be running.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp

from pullthrough.config.model import S3Config
from pullthrough.errors import BucketUnavailable

log = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_PAGES = 100  # of 1,000 uploads each: a sweep is bounded whatever the bucket answers


@dataclass(frozen=True, slots=True)
class PendingUpload:
    key: str
    upload_id: str
    initiated: dt.datetime


class BucketUploads:
    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.prefix = f"{config.prefix}/" if config.prefix else ""

    @property
    def can_sign(self) -> bool:
        return bool(self.config.access_key and self.config.secret_key)

    async def sweep(self, older_than: float) -> int:
        """Abort our uploads started more than ``older_than`` seconds ago; how many."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        aborted = 0
        timeout = aiohttp.ClientTimeout(total=120, connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for upload in await self.pending(session):
                if upload.initiated <= cutoff:
                    await self._abort(session, upload)
                    aborted += 1
        if aborted:
            log.info("bucket: aborted %d multipart upload(s) left by a crash", aborted)
        return aborted

    async def pending(self, session: aiohttp.ClientSession) -> list[PendingUpload]:
        found: list[PendingUpload] = []
        params = {"uploads": "", "prefix": self.prefix}
        for _ in range(MAX_PAGES):
            text = await self._request(session, "GET", "", params)
            page, truncated, markers = _parse_listing(text)
            found += [u for u in page if u.key.startswith(self.prefix)]
            if not truncated or markers is None:
                break
            params = {"uploads": "", "prefix": self.prefix, **markers}
        return found

    async def _abort(self, session: aiohttp.ClientSession, upload: PendingUpload) -> None:
        await self._request(session, "DELETE", upload.key, {"uploadId": upload.upload_id})

    async def _request(
        self, session: aiohttp.ClientSession, method: str, key: str, params: dict[str, str]
    ) -> str:
        url, headers = self._signed(method, key, params)
        try:
            async with session.request(
                method, url, headers=headers, ssl=self.config.verify_tls
            ) as resp:
                body = await resp.content.read(4 * 1024 * 1024)
                if resp.status >= 300 and not (method == "DELETE" and resp.status == 404):
                    raise BucketUnavailable(
                        f"{method} of multipart uploads answered {resp.status}: "
                        f"{_error_code(body)}"
                    )
                return body.decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BucketUnavailable(f"the bucket could not be reached: {exc}") from None

    def _signed(self, method: str, key: str, params: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The URL and headers of a request signed with Signature Version 4."""
        c = self.config
        base = urlsplit(c.endpoint)
        if c.path_style:
            host = base.netloc
            path = f"/{c.bucket}/{key}" if key else f"/{c.bucket}"
        else:
            host = f"{c.bucket}.{base.netloc}"
            path = f"/{key}"
        uri = quote(path, safe="/~")
        query = "&".join(
            f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(params.items())
        )
        now = dt.datetime.now(dt.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        if c.session_token:
            headers["x-amz-security-token"] = c.session_token
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                uri,
                query,
                "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                ";".join(names),
                EMPTY_SHA256,
            ]
        )
        scope = f"{day}/{c.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key_ = f"AWS4{c.secret_key}".encode()
        for part in (day, c.region, "s3", "aws4_request"):
            key_ = hmac.new(key_, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key_, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={c.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        del headers["host"]  # aiohttp sends it from the URL, as signed
        url = f"{base.scheme}://{host}{uri}" + (f"?{query}" if query else "")
        return url, headers


def _parse_listing(text: str) -> tuple[list[PendingUpload], bool, dict[str, str] | None]:
    """A ListMultipartUploads page (untrusted: anything unexpected is skipped)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BucketUnavailable(f"the bucket's list of uploads is not XML: {exc}") from None
    uploads: list[PendingUpload] = []
    for item in root.iter(f"{_NS}Upload"):
        key, upload_id = item.findtext(f"{_NS}Key"), item.findtext(f"{_NS}UploadId")
        initiated = item.findtext(f"{_NS}Initiated")
        if not key or not upload_id or not initiated:
            continue
        try:
            when = dt.datetime.fromisoformat(initiated.replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        uploads.append(PendingUpload(key, upload_id, when))
    truncated = (root.findtext(f"{_NS}IsTruncated") or "").strip().lower() == "true"
    key_marker = root.findtext(f"{_NS}NextKeyMarker")
    id_marker = root.findtext(f"{_NS}NextUploadIdMarker")
    markers = (
        {"key-marker": key_marker, "upload-id-marker": id_marker or ""} if key_marker else None
    )
    return uploads, truncated, markers


def _error_code(body: bytes) -> str:
    text = body[:2000].decode("utf-8", "replace")
    start, end = text.find("<Code>"), text.find("</Code>")
    return text[start + 6 : end] if 0 <= start < end else "no S3 error code"
