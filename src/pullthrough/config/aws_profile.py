"""The AWS shared credentials and config files, for ``storage.s3`` without keys.

When ``storage.s3`` names no ``accesskey``, distribution (the AWS SDK) finds credentials in
this order: the ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` environment, then the
profile (``AWS_PROFILE``, else ``default``) in the shared credentials file
(``AWS_SHARED_CREDENTIALS_FILE``, else ``~/.aws/credentials``) and the shared config file
(``AWS_CONFIG_FILE``, else ``~/.aws/config``, where it is ``[profile NAME]``), then web
identity (pod role), container and instance roles. The S3 client (obstore) reads all but
the files; this reads a profile's static keys from them, so a host set up with
``aws configure`` works as it does for registry:2.

Profiles that get their keys elsewhere (``role_arn``, ``sso_*``, ``credential_process``,
``credential_source``) are not followed: the server says so at start and the rest of the
chain applies.
"""

from __future__ import annotations

import configparser
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pullthrough.config.model import S3Config

log = logging.getLogger(__name__)

# Keys of a profile that name another way to get credentials than static keys.
_INDIRECT = ("role_arn", "credential_process", "credential_source", "sso_session", "sso_start_url")


@dataclass(frozen=True, slots=True)
class ProfileKeys:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = ""  # the file and profile they came from, for the log and `check`


def profile_keys(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> ProfileKeys | None:
    """The static keys of the selected profile, or None when the environment has keys
    (they come first), no file names the profile, or the profile has no static keys."""
    env = os.environ if environ is None else environ
    if env.get("AWS_ACCESS_KEY_ID"):
        return None
    home = Path.home() if home is None else home
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    credentials = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials")
    config = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    config_section = profile if profile == "default" else f"profile {profile}"
    for path, section in ((credentials, profile), (config, config_section)):
        values = _section(path, section)
        if values is None:
            continue
        access, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
        if access and secret:
            return ProfileKeys(
                access_key=access,
                secret_key=secret,
                session_token=values.get("aws_session_token") or None,
                source=f"profile {profile} in {path}",
            )
        indirect = [k for k in _INDIRECT if k in values]
        if indirect:
            log.warning(
                "storage.s3: profile %s in %s gets its keys through %s, which pullthrough "
                "does not follow; using web identity, container or instance roles",
                profile,
                path,
                ", ".join(indirect),
            )
    return None


def _section(path: Path, name: str) -> dict[str, str] | None:
    parser = configparser.RawConfigParser(default_section="\0none")
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        # Never the file's text: it holds secrets.
        log.warning(
            "storage.s3: %s cannot be read as an AWS config file: %s", path, type(exc).__name__
        )
        return None
    if not parser.has_section(name):
        return None
    return {k.strip().lower(): v.strip() for k, v in parser.items(name)}


def with_profile_keys(config: S3Config) -> S3Config:
    """``config`` with a shared file's keys when it names none and the environment has
    none (the order distribution's SDK uses); else ``config`` itself."""
    if config.access_key is not None:
        return config
    keys = profile_keys()
    if keys is None:
        return config
    log.info("storage.s3: credentials from %s", keys.source)
    return dataclasses.replace(
        config,
        access_key=keys.access_key,
        secret_key=keys.secret_key,
        session_token=keys.session_token,
        credentials_from=keys.source,
    )
