"""``pullthrough check`` with storage.s3 connects to the bucket and says what works, without
printing a credential."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.s3.conftest import S3Bucket
from tests.support.s3_server import CephS3

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def check(tmp_path: Path, storage: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "storage": storage,
                "mirror": {"s3": {"localcache": {"path": str(tmp_path / "cache")}}},
            }
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_lists_writes_reads_and_deletes_in_the_bucket(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    done = check(tmp_path, s3_bucket.storage(rootdirectory="/checked"))
    assert done.returncode == 0, done.stderr
    for step in ("list", "write", "read", "delete"):
        assert f"  {step}: ok" in done.stdout
    assert f"bucket {s3_bucket.bucket} at {s3_bucket.endpoint_url} under checked/" in done.stdout
    assert s3_bucket.secret_key not in done.stdout + done.stderr


def test_check_says_which_step_fails_on_a_missing_bucket(s3_server: CephS3, tmp_path: Path) -> None:
    missing = S3Bucket.on(s3_server, "pt-no-such-bucket")
    done = check(tmp_path, missing.storage())
    assert done.returncode == 1
    assert "list: FAILED: 404" in done.stdout and "NoSuchBucket" in done.stdout
    assert "cannot be used" in done.stderr
    assert s3_server.secret_key not in done.stdout + done.stderr


def test_check_says_the_credentials_are_refused(s3_server: CephS3, tmp_path: Path) -> None:
    wrong = S3Bucket.on(s3_server, s3_server.bucket)
    wrong.secret_key = "wr0ng-s3cret-value"
    done = check(tmp_path, wrong.storage())
    assert done.returncode == 1
    assert "list: FAILED: 403" in done.stdout and "SignatureDoesNotMatch" in done.stdout
    assert "wr0ng-s3cret-value" not in done.stdout + done.stderr
