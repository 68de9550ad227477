"""``pullthrough check`` with storage.s3 connects to the bucket and says what works, without
printing a credential."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.s3.conftest import S3Bucket
from tests.support.s3_server import CephS3

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def check(
    tmp_path: Path, storage: dict[str, object], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
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
        env=env,
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


def test_without_keys_a_profile_in_the_aws_credentials_file_is_used(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """As registry:2's SDK does: no accesskey in the config and none in the environment,
    so the keys of ``AWS_PROFILE`` in ``~/.aws/credentials`` (a host set up with ``aws
    configure``)."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIANOTTHEONE\naws_secret_access_key = nope\n"
        f"[mirror]\naws_access_key_id = {s3_bucket.access_key}\n"
        f"aws_secret_access_key = {s3_bucket.secret_key}\n"
    )
    storage = s3_bucket.storage(rootdirectory="/profiled")
    s3 = storage["s3"]
    assert isinstance(s3, dict)
    del s3["accesskey"], s3["secretkey"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = check(tmp_path, storage, {**env, "HOME": str(home), "AWS_PROFILE": "mirror"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"(profile mirror in {home / '.aws' / 'credentials'};" in done.stdout
    assert "delete: ok" in done.stdout
    assert s3_bucket.secret_key not in done.stdout + done.stderr
    # The default profile's keys are refused: the profile named is the one used.
    done = check(tmp_path, storage, {**env, "HOME": str(home)})
    assert done.returncode == 1 and "list: FAILED: 403" in done.stdout
