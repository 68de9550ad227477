"""Fixtures for S3 tests: a real S3 server (Ceph's radosgw on a private one-OSD cluster,
tests/support/s3_server.py) on a loopback port, with one user; each test that stores
through pullthrough gets a bucket of its own on it (``s3_bucket``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import redis_server  # noqa: F401 (the same fixtures)
from tests.cluster.redis_server import RedisServer
from tests.integration.conftest import mirror_factory  # noqa: F401
from tests.support.mirror import MirrorProcess
from tests.support.s3_client import create_bucket as create_server_bucket
from tests.support.s3_server import APT_PACKAGES, CephS3, available

PEER_SECRET = "the replicas' own secret, for tests"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "s3: talks to a real S3 server (radosgw) the test run starts on loopback"
    )


def _require_ceph() -> None:
    if not available():
        pytest.skip(f"radosgw not installed (apt-get install {' '.join(APT_PACKAGES)})")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephS3]:
    """One S3 server for the session (starts in about 2 s). Tests write under keys of their
    own; they may ``stop()``/``start()`` it but must leave it running."""
    _require_ceph()
    with CephS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def own_s3_server(tmp_path: Path) -> Iterator[CephS3]:
    """An S3 server of this test's own, for tests that crash it or leave it stopped."""
    _require_ceph()
    with CephS3(tmp_path / "s3") as server:
        yield server


@dataclass
class S3Bucket:
    """A bucket on a test server, and the ``storage`` section pointing pullthrough at it."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @classmethod
    def on(cls, server: CephS3, name: str | None = None, endpoint: str | None = None) -> S3Bucket:
        return cls(
            endpoint or server.endpoint_url,
            name or f"pt-{uuid.uuid4().hex[:12]}",
            server.access_key,
            server.secret_key,
            server.region,
        )

    def storage(self, **extra: object) -> dict[str, object]:
        return {
            "s3": {
                "bucket": self.bucket,
                "region": self.region,
                "regionendpoint": self.endpoint_url,
                "accesskey": self.access_key,
                "secretkey": self.secret_key,
                "secure": False,
                **extra,
            }
        }


def create_bucket(bucket: S3Bucket) -> None:
    create_server_bucket(bucket)


@pytest.fixture
def s3_bucket(s3_server: CephS3) -> S3Bucket:
    bucket = S3Bucket.on(s3_server)
    create_bucket(bucket)
    return bucket


@pytest.fixture
def bucket_replicas(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811 (the fixture imported above)
    s3_bucket: S3Bucket,
) -> Iterator[Any]:
    """``bucket_replicas(remoteurl, n, stream=True, bucket=None, peers=True, extra=None)``:
    replicas on ``s3_bucket`` (or ``bucket``) and Redis, each with a local directory of its
    own (no shared filesystem); with ``peers`` they share a ``mirror.cluster.secret`` and
    stream a blob from the replica fetching it. ``extra``: more config (its ``mirror``
    keys beside the cluster's)."""
    made: list[MirrorProcess] = []

    def factory(
        remoteurl: str,
        n: int = 3,
        *,
        stream: bool = True,
        bucket: S3Bucket | None = None,
        peers: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> list[MirrorProcess]:
        group = []
        for _ in range(n):
            i = len(made)
            storage: dict[str, Any] = (bucket or s3_bucket).storage()
            if stream:
                storage["redirect"] = {"disable": True}
            storage.update((extra or {}).get("storage", {}))
            local = tmp_path / f"replica-{i}" / "data"
            replica = MirrorProcess(
                tmp_path / f"replica-{i}",
                remoteurl,
                config={
                    "log": {"level": "info"},
                    "storage": storage,
                    "mirror": {
                        "cluster": {
                            "redis": {"addr": redis_server.addr},
                            **({"secret": PEER_SECRET} if peers else {}),
                        },
                        "s3": {"localcache": {"path": str(local), "maxsize": "1GiB"}},
                        "tag_freshness": "1m",
                        **(extra or {}).get("mirror", {}),
                    },
                    **{k: v for k, v in (extra or {}).items() if k not in ("mirror", "storage")},
                },
            )
            made.append(replica)
            group.append(replica.start())
        return group

    yield factory
    for replica in made:
        replica.stop()
        print(f"--- {replica.log_path} (tail)\n{replica.log_tail(30)}")
