"""Registry errors, one type per OCI error code.

Raised where the fact is known (parsing, the mirror policy, the upstream client) and
turned into an OCI error body in one place, the server's error middleware.
"""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error the client sees as ``{"errors":[{"code", "message", "detail"}]}``."""

    code: str = "UNKNOWN"
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


class NameInvalid(RegistryError):
    code, status = "NAME_INVALID", 400


class NameUnknown(RegistryError):
    code, status = "NAME_UNKNOWN", 404


class TagInvalid(RegistryError):
    code, status = "TAG_INVALID", 400


class DigestInvalid(RegistryError):
    code, status = "DIGEST_INVALID", 400


class ManifestUnknown(RegistryError):
    code, status = "MANIFEST_UNKNOWN", 404


class ManifestInvalid(RegistryError):
    code, status = "MANIFEST_INVALID", 502


class BlobUnknown(RegistryError):
    code, status = "BLOB_UNKNOWN", 404


class RangeInvalid(RegistryError):
    code, status = "RANGE_INVALID", 416


class PaginationInvalid(RegistryError):
    code, status = "PAGINATION_NUMBER_INVALID", 400


class NotFound(RegistryError):
    """A path that is no endpoint of the registry API."""

    code, status = "NOT_FOUND", 404


class SizeInvalid(RegistryError):
    code, status = "SIZE_INVALID", 413


class Unsupported(RegistryError):
    code, status = "UNSUPPORTED", 405


class Unauthorized(RegistryError):
    code, status = "UNAUTHORIZED", 401


class Denied(RegistryError):
    code, status = "DENIED", 403


class TooManyRequests(RegistryError):
    code, status = "TOOMANYREQUESTS", 429


class UpstreamUnavailable(RegistryError):
    """The upstream could not be reached (or failed) and nothing cached can answer."""

    code, status = "UNAVAILABLE", 503


class BucketUnavailable(RegistryError):
    """storage.s3: the bucket did not answer, or refused (credentials, permissions)."""

    code, status = "UNAVAILABLE", 503


class UpstreamInvalid(RegistryError):
    """The upstream answered with something that cannot be trusted (wrong digest, bad body)."""

    code, status = "UPSTREAM_INVALID", 502


class OutboundRefused(UpstreamInvalid):
    """The mirror's outbound policy refused a URL an upstream sent it to (a non-public
    address, a non-HTTP scheme, too many redirects): nothing was requested there."""

    code, status = "OUTBOUND_REFUSED", 502


class StoredBlobCorrupt(RegistryError):
    """A stored blob failed its check before any byte of the answer went out (it has been
    removed; asking the mirror again fetches it)."""

    code, status = "UNAVAILABLE", 503


# --- hosted repositories (the push side) -------------------------------------------------


class BlobUploadUnknown(RegistryError):
    code, status = "BLOB_UPLOAD_UNKNOWN", 404


class BlobUploadInvalid(RegistryError):
    code, status = "BLOB_UPLOAD_INVALID", 400


class ManifestRejected(RegistryError):
    """A pushed manifest that cannot be stored (``ManifestInvalid`` is an upstream's bad
    manifest: 502)."""

    code, status = "MANIFEST_INVALID", 400


class ManifestBlobUnknown(RegistryError):
    """A pushed manifest references a blob or manifest the repository does not hold."""

    code, status = "MANIFEST_BLOB_UNKNOWN", 400


class StorageFull(RegistryError):
    """The store's disk is full: nothing of the request was kept."""

    code, status = "UNAVAILABLE", 507
