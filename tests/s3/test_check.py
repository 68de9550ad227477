"""``pullthrough check`` with storage.s3 connects to the bucket and says what works, without
printing a credential."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.s3.conftest import S3Bucket

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
    assert f"bucket {s3_bucket.bucket} at {s3_bucket.endpoint} under checked/" in done.stdout
    assert s3_bucket.secret_key not in done.stdout + done.stderr


def test_check_says_which_step_fails_on_a_missing_bucket(
    s3_endpoint: str, tmp_path: Path
) -> None:
    missing = S3Bucket(s3_endpoint, "pt-no-such-bucket", secret_key="s3cr3t-v4lue")
    done = check(tmp_path, missing.storage())
    assert done.returncode == 1
    assert "list: FAILED" in done.stdout
    assert "cannot be used" in done.stderr
    assert "s3cr3t-v4lue" not in done.stdout + done.stderr
