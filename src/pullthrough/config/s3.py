"""``storage.s3`` (and ``mirror.s3``) as validated: distribution's S3 driver parameters,
so that a ``registry:2`` config pointing at a bucket is read unchanged. A key pullthrough
does not know, or one whose value it cannot honour, is an error naming the key: silently
ignoring ``encrypt`` or ``v4auth`` would store or sign differently from what the operator
asked for."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pullthrough.config.model import S3Config
from pullthrough.config.schema import _S3, Root
from pullthrough.config.values import ConfigError, parse_duration, parse_size

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_PART = 5 * 1024**3
DEFAULT_PART = 10 * 1024 * 1024  # distribution's default chunksize
# Distribution's values for storageclass; NONE leaves it to the bucket.
STORAGE_CLASSES = {
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "OUTPOSTS",
    "NONE",
}
OBJECT_ACLS = {
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
}


def s3_config(root: Root) -> S3Config | None:
    """``storage.s3`` checked, or None when the store is a filesystem."""
    section = root.storage.s3
    if section is None:
        return None  # (storage.redirect means nothing without a bucket, as in distribution)
    if "filesystem" in root.storage.model_fields_set:
        raise ConfigError(
            "storage: both filesystem and s3 are set; give one storage driver "
            "(with s3, the local directory is mirror.s3.localcache.path)"
        )
    key = "storage.s3"
    for extra in sorted(section.model_extra or {}):
        raise ConfigError(f"{key}.{extra}: not a parameter of the S3 storage driver")
    bucket = _required(section.bucket, f"{key}.bucket")
    region = _required(section.region, f"{key}.region")
    _unsupported(section)
    endpoint, path_style = _endpoint(section, region)
    if (section.accesskey is None) != (section.secretkey is None):
        raise ConfigError(
            f"{key}.accesskey: accesskey and secretkey go together (neither: the AWS "
            "credential chain: environment, shared config, instance or pod role)"
        )
    part = (
        DEFAULT_PART
        if section.chunksize is None
        else parse_size(section.chunksize, f"{key}.chunksize")
    )
    if not MIN_PART <= part <= MAX_PART:
        raise ConfigError(
            f"{key}.chunksize: must be between 5 MiB ({MIN_PART}) and 5 GiB, got {part}"
        )
    for name in ("multipartcopychunksize", "multipartcopythresholdsize"):
        value = getattr(section, name)
        if value is not None and parse_size(value, f"{key}.{name}") < MIN_PART:
            raise ConfigError(f"{key}.{name}: must be at least 5 MiB ({MIN_PART})")
    concurrency = section.multipartcopymaxconcurrency
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigError(f"{key}.multipartcopymaxconcurrency: must be a positive integer")
    if section.keyid and not section.encrypt:
        raise ConfigError(f"{key}.keyid: a KMS key is used only with encrypt: true")
    storage_class = (section.storageclass or "STANDARD").upper()
    if storage_class not in STORAGE_CLASSES:
        raise ConfigError(
            f"{key}.storageclass: expected one of {', '.join(sorted(STORAGE_CLASSES))}, "
            f"got {section.storageclass!r}"
        )
    acl = section.objectacl or "private"
    if acl not in OBJECT_ACLS:
        raise ConfigError(
            f"{key}.objectacl: expected one of {', '.join(sorted(OBJECT_ACLS))}, got {acl!r}"
        )
    if acl != "private":
        raise ConfigError(
            f"{key}.objectacl: only private is supported (objects are read through the "
            "mirror or its presigned URLs); give access with a bucket policy instead"
        )
    cache = root.mirror.s3.localcache
    if not str(cache.path).strip():
        raise ConfigError("mirror.s3.localcache.path: must not be empty")
    expiry = parse_duration(root.mirror.s3.redirect_expiry, "mirror.s3.redirect_expiry")
    if not 1 <= expiry <= 7 * 24 * 3600:
        raise ConfigError("mirror.s3.redirect_expiry: must be between 1s and 168h (S3's limit)")
    return S3Config(
        bucket=bucket,
        region=region,
        endpoint=endpoint,
        path_style=path_style,
        access_key=section.accesskey,
        secret_key=section.secretkey,
        session_token=section.sessiontoken,
        prefix=(section.rootdirectory or "").strip("/"),
        verify_tls=not section.skipverify,
        chunk_size=part,
        encrypt=section.encrypt,
        kms_key_id=section.keyid or None,
        storage_class=None if storage_class == "NONE" else storage_class,
        object_acl=acl,
        user_agent=section.useragent,
        redirect=not root.storage.redirect.disable,
        redirect_expiry=expiry,
        local_path=Path(cache.path),
        local_cache=parse_size(cache.maxsize, "mirror.s3.localcache.maxsize"),
    )


def _required(value: str | None, key: str) -> str:
    if value is None or not str(value).strip():
        raise ConfigError(f"{key}: required by the S3 storage driver")
    return str(value).strip()


def _unsupported(section: _S3) -> None:
    """Parameters distribution has that pullthrough cannot honour: an error, not a quiet
    difference."""
    key = "storage.s3"
    if not section.v4auth:
        raise ConfigError(f"{key}.v4auth: only AWS Signature Version 4 is supported (v4auth: true)")
    if section.usedualstack:
        raise ConfigError(f"{key}.usedualstack: not supported; give the endpoint as regionendpoint")
    if section.accelerate:
        raise ConfigError(f"{key}.accelerate: not supported; give the endpoint as regionendpoint")


def _endpoint(section: _S3, region: str) -> tuple[str, bool]:
    """The endpoint's base URL and whether the bucket goes in the path."""
    key = "storage.s3.regionendpoint"
    if not section.regionendpoint:
        scheme = "https" if section.secure else "http"
        return f"{scheme}://s3.{region}.amazonaws.com", bool(section.forcepathstyle)
    text = section.regionendpoint.strip()
    if "://" not in text:  # distribution takes a bare host and adds the scheme of ``secure``
        text = f"{'https' if section.secure else 'http'}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected a URL such as https://minio.example:9000")
    if "@" in parts.netloc:
        raise ConfigError(f"{key}: credentials belong in accesskey and secretkey, not the URL")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{key}: expected scheme://host[:port] without a path")
    # A custom endpoint is nearly always an S3-compatible server, which wants path style
    # (distribution 2.8 forces it whenever regionendpoint is set).
    path_style = True if section.forcepathstyle is None else section.forcepathstyle
    return f"{parts.scheme}://{parts.netloc}", path_style
