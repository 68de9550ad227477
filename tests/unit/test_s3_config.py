"""storage.s3 as registry:2 configs write it: read unchanged, every bad or unsupported value
an error naming its key, credentials never in a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullthrough.config import ConfigError, load

# The S3 section as the distribution docs show it (every parameter, MinIO-style endpoint).
REGISTRY_S3_CONFIG = """
version: 0.1
storage:
  s3:
    accesskey: AKIAEXAMPLEKEY
    secretkey: wJalrXUtnFEMIexamplesecret
    region: us-west-1
    regionendpoint: http://minio.internal:9000
    forcepathstyle: true
    bucket: registry-bucket
    encrypt: true
    keyid: mykeyid
    secure: false
    skipverify: false
    v4auth: true
    chunksize: 5242880
    multipartcopychunksize: 33554432
    multipartcopymaxconcurrency: 100
    multipartcopythresholdsize: 33554432
    rootdirectory: /s3/object/name/prefix
    storageclass: STANDARD
    objectacl: private
    useragent: my-registry
    loglevel: debug
  redirect:
    disable: true
proxy:
  remoteurl: https://registry-1.docker.io
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_a_registry_s3_config_is_read_unchanged(tmp_path: Path) -> None:
    config = load(write(tmp_path, REGISTRY_S3_CONFIG), environ={})
    s3 = config.s3
    assert s3 is not None
    assert (s3.bucket, s3.region, s3.endpoint) == (
        "registry-bucket",
        "us-west-1",
        "http://minio.internal:9000",
    )
    assert s3.path_style and s3.prefix == "s3/object/name/prefix"
    assert (s3.access_key, s3.secret_key) == ("AKIAEXAMPLEKEY", "wJalrXUtnFEMIexamplesecret")
    assert s3.encrypt and s3.kms_key_id == "mykeyid"
    assert s3.chunk_size == 5 * 1024 * 1024 and s3.storage_class == "STANDARD"
    assert s3.user_agent == "my-registry" and not s3.redirect
    assert "wJalr" not in repr(s3)  # credentials stay out of reprs (and so out of logs)
    assert config.root == Path("./data")  # downloads, index and cache: mirror.s3.localcache


def test_defaults_follow_distribution(tmp_path: Path) -> None:
    text = "storage: {s3: {bucket: b-1, region: eu-central-1}}"
    s3 = load(write(tmp_path, text), environ={}).s3
    assert s3 is not None
    assert s3.endpoint == "https://s3.eu-central-1.amazonaws.com" and not s3.path_style
    assert s3.access_key is None  # the AWS credential chain
    assert s3.chunk_size == 10 * 1024 * 1024 and s3.redirect and s3.verify_tls
    assert s3.storage_class == "STANDARD" and s3.local_cache == 0
    bare = "storage: {s3: {bucket: b-1, region: r, regionendpoint: 'minio:9000', secure: false}}"
    s3 = load(write(tmp_path, bare), environ={}).s3
    assert s3 is not None and s3.endpoint == "http://minio:9000" and s3.path_style


def test_environment_overrides_reach_the_s3_section(tmp_path: Path) -> None:
    text = "storage: {s3: {bucket: b-1, region: r}}"
    environ = {
        "REGISTRY_STORAGE_S3_ACCESSKEY": "0123",  # text, even when it looks like a number
        "REGISTRY_STORAGE_S3_SECRETKEY": "pa: ss",
        "REGISTRY_STORAGE_S3_BUCKET": "other-bucket",
        "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
    }
    config = load(write(tmp_path, text), environ=environ)
    assert not any("REGISTRY_STORAGE" in w for w in config.warnings)
    s3 = config.s3
    assert s3 is not None
    assert (s3.access_key, s3.secret_key, s3.bucket) == ("0123", "pa: ss", "other-bucket")
    assert not s3.redirect


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("storage: {s3: {region: r}}", "storage.s3.bucket"),
        ("storage: {s3: {bucket: b}}", "storage.s3.region"),
        ("storage: {s3: {bucket: b, region: r, colour: blue}}", "storage.s3.colour"),
        ("storage: {s3: {bucket: b, region: r, v4auth: false}}", "storage.s3.v4auth"),
        ("storage: {s3: {bucket: b, region: r, accelerate: true}}", "storage.s3.accelerate"),
        ("storage: {s3: {bucket: b, region: r, usedualstack: true}}", "storage.s3.usedualstack"),
        ("storage: {s3: {bucket: b, region: r, chunksize: 1024}}", "storage.s3.chunksize"),
        ("storage: {s3: {bucket: b, region: r, chunksize: lots}}", "storage.s3.chunksize"),
        ("storage: {s3: {bucket: b, region: r, keyid: k}}", "storage.s3.keyid"),
        ("storage: {s3: {bucket: b, region: r, storageclass: COLD}}", "storage.s3.storageclass"),
        ("storage: {s3: {bucket: b, region: r, objectacl: everyone}}", "storage.s3.objectacl"),
        ("storage: {s3: {bucket: b, region: r, objectacl: public-read}}", "storage.s3.objectacl"),
        ("storage: {s3: {bucket: b, region: r, accesskey: a}}", "storage.s3.accesskey"),
        (
            "storage: {s3: {bucket: b, region: r, regionendpoint: 'ftp://x'}}",
            "storage.s3.regionendpoint",
        ),
        (
            "storage: {s3: {bucket: b, region: r, regionendpoint: 'http://u:p@x'}}",
            "storage.s3.regionendpoint",
        ),
        (
            "storage: {s3: {bucket: b, region: r, multipartcopythresholdsize: 10}}",
            "storage.s3.multipartcopythresholdsize",
        ),
        ("storage: {s3: {bucket: b, region: r, secure: maybe}}", "storage.s3.secure"),
        (
            "storage: {s3: {bucket: b, region: r}, filesystem: {rootdirectory: /x}}",
            "storage",
        ),
        (
            "storage: {s3: {bucket: b, region: r}}\nmirror: {s3: {redirect_expiry: 30d}}",
            "mirror.s3.redirect_expiry",
        ),
        (
            "storage: {s3: {bucket: b, region: r}}\nmirror: {s3: {localcache: {maxsize: x}}}",
            "mirror.s3.localcache.maxsize",
        ),
        ("storage: {gcs: {bucket: b}}", "storage.gcs"),
        ("storage: {s3: {bucket: b, region: r}}\nmirror: {maxsize: 80%}", "mirror.maxsize"),
    ],
)
def test_bad_s3_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    message = str(info.value)
    assert message.startswith(key + ":") or message.startswith(key + " "), message
    assert "\n" not in message


def test_a_credential_is_never_in_an_error(tmp_path: Path) -> None:
    text = "storage: {s3: {bucket: b, region: r, accesskey: [sup3rs3cret], secretkey: x}}"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    assert "storage.s3.accesskey" in str(info.value)
    assert "sup3rs3cret" not in str(info.value)


def test_hosted_repositories_on_a_bucket(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            "storage: {s3: {bucket: b, region: r}}\nmirror: {hosted: {repositories: [acme]}}",
        ),
        environ={},
    )
    assert config.s3 is not None and config.hosted is not None
    assert config.hosted.holds("acme/app")
    cluster = (
        "storage: {s3: {bucket: b, region: r}}\nmirror: {hosted: {repositories: [acme]},"
        " cluster: {redis: {addr: '127.0.0.1:6379'}, advertise: 'http://10.0.0.5:5000'}}"
    )
    replicas = load(write(tmp_path, cluster), environ={})
    assert replicas.s3 is not None and replicas.hosted is not None
    assert replicas.cluster is not None
