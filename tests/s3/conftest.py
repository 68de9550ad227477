"""TEMPORARY (dev): a moto server from /tmp/vm; replaced by tests/support/s3_server.py."""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.conftest import mirror_factory  # noqa: F401 (the same fixture)
from tests.support.net import free_port


@dataclass
class S3Bucket:
    endpoint: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = "pt-access-key"
    secret_key: str = "pt-secret-0d9f3a"

    def storage(self, **extra: object) -> dict[str, object]:
        return {
            "s3": {
                "bucket": self.bucket,
                "region": self.region,
                "regionendpoint": self.endpoint,
                "accesskey": self.access_key,
                "secretkey": self.secret_key,
                "secure": False,
                **extra,
            }
        }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["/tmp/vm/bin/moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/", timeout=1).read()
            break
        except Exception:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def create_bucket(bucket: S3Bucket) -> None:
    req = urllib.request.Request(f"{bucket.endpoint}/{bucket.bucket}", data=b"", method="PUT")
    urllib.request.urlopen(req, timeout=5).read()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    bucket = S3Bucket(s3_endpoint, f"pt-{uuid.uuid4().hex[:12]}")
    create_bucket(bucket)
    return bucket
