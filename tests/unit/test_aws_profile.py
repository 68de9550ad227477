"""storage.s3 without keys reads a profile's static keys from the AWS shared files, in the
order distribution's SDK does: environment first, then the credentials file, then the
config file; a profile that gets its keys some other way is not followed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pullthrough.config.aws_profile import profile_keys

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_default_profile_of_the_credentials_file(tmp_path: Path) -> None:
    write(
        tmp_path / ".aws" / "credentials",
        f"[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = {SECRET}\n"
        "[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = x\n",
    )
    keys = profile_keys({}, home=tmp_path)
    assert keys is not None
    assert (keys.access_key, keys.secret_key, keys.session_token) == ("AKIADEFAULT", SECRET, None)
    assert keys.source == f"profile default in {tmp_path / '.aws' / 'credentials'}"
    assert SECRET not in repr(keys)


def test_aws_profile_and_the_files_named_by_the_environment(tmp_path: Path) -> None:
    credentials = write(
        tmp_path / "creds.ini",
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = d\n"
        "[ci]\naws_access_key_id = AKIACI\naws_secret_access_key = c\n"
        "aws_session_token = TOKEN\n",
    )
    env = {"AWS_PROFILE": "ci", "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    keys = profile_keys(env, home=tmp_path / "nowhere")
    assert keys is not None and (keys.access_key, keys.session_token) == ("AKIACI", "TOKEN")


def test_the_config_file_names_profiles_with_a_prefix(tmp_path: Path) -> None:
    write(
        tmp_path / ".aws" / "config",
        "[profile ci]\nregion = eu-west-1\naws_access_key_id = AKIAFROMCONFIG\n"
        "aws_secret_access_key = s\n",
    )
    assert profile_keys({"AWS_PROFILE": "ci"}, home=tmp_path) is not None
    assert profile_keys({}, home=tmp_path) is None  # no [default] anywhere


def test_keys_in_the_environment_come_first(tmp_path: Path) -> None:
    write(
        tmp_path / ".aws" / "credentials",
        "[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = f\n",
    )
    assert profile_keys({"AWS_ACCESS_KEY_ID": "AKIAENV"}, home=tmp_path) is None


def test_a_role_profile_is_not_followed_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(
        tmp_path / ".aws" / "config",
        "[default]\nrole_arn = arn:aws:iam::123456789012:role/registry\n"
        "source_profile = base\n",
    )
    with caplog.at_level(logging.WARNING):
        assert profile_keys({}, home=tmp_path) is None
    assert "role_arn, which pullthrough does not follow" in caplog.text


def test_an_unreadable_file_is_named_without_its_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / ".aws" / "credentials", f"aws_secret_access_key = {SECRET}\n[default\n")
    with caplog.at_level(logging.WARNING):
        assert profile_keys({}, home=tmp_path) is None
    assert "cannot be read as an AWS config file" in caplog.text
    assert SECRET not in caplog.text


def test_no_files_no_keys(tmp_path: Path) -> None:
    assert profile_keys({}, home=tmp_path) is None
