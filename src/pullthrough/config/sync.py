"""``mirror.sync`` (what is refreshed on a schedule), read into SyncEntry values with
errors naming the key: ``{upstream, repository, tags, interval, platforms}``."""

from __future__ import annotations

import re
from typing import Any

from pullthrough.config.model import DOCKER_HUB_NAME, SyncEntry
from pullthrough.config.policy import _repository
from pullthrough.config.schema import _SyncEntry
from pullthrough.config.values import ConfigError, parse_duration
from pullthrough.semver import RANGE_START, RangeError, parse_range

# Listing a repository's tags costs the upstream a request per page: not more often.
MIN_INTERVAL = 1.0
_PLATFORM = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(/[a-z0-9_.-]+)?$")


def sync_entries(entries: list[_SyncEntry], upstreams: set[str]) -> tuple[SyncEntry, ...]:
    """Every ``mirror.sync`` entry validated, in order."""
    return tuple(_entry(i, entry, upstreams) for i, entry in enumerate(entries))


def _entry(i: int, entry: _SyncEntry, upstreams: set[str]) -> SyncEntry:
    key = f"mirror.sync[{i}]"
    upstream = (entry.upstream or "").strip().lower()
    if upstream not in upstreams:
        raise ConfigError(
            f"{key}.upstream: expected a configured upstream ({', '.join(sorted(upstreams))}), "
            f"got {entry.upstream!r}"
        )
    if not entry.repository or "*" in entry.repository:
        raise ConfigError(f"{key}.repository: required, a repository name such as library/alpine")
    repository = _repository(f"{key}.repository", entry.repository, hub=upstream == DOCKER_HUB_NAME)
    tags, semver = _tags(f"{key}.tags", entry.tags)
    if entry.interval is None:
        raise ConfigError(f"{key}.interval: required, a duration such as 6h")
    interval = parse_duration(entry.interval, f"{key}.interval")
    if interval < MIN_INTERVAL:
        raise ConfigError(
            f"{key}.interval: must be at least {MIN_INTERVAL:g}s, got {entry.interval!r}"
        )
    return SyncEntry(
        index=i,
        upstream=upstream,
        repository=repository,
        tags=tags,
        semver=semver,
        interval=interval,
        platforms=_platforms(f"{key}.platforms", entry.platforms),
    )


def _tags(key: str, value: Any) -> tuple[str, bool]:
    """The pattern and whether it is a semver range (it starts with a comparator)."""
    if value is None or not str(value).strip():
        raise ConfigError(
            f"{key}: required, a regular expression such as '^3\\.2[0-9]$' or a semver "
            "range such as '>=3.19 <4'"
        )
    text = str(value).strip()
    if text.startswith(RANGE_START):
        try:
            parse_range(text)
        except RangeError as exc:
            raise ConfigError(f"{key}: not a semver range: {exc}") from None
        return text, True
    try:
        re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{key}: not a regular expression: {exc} in {text!r}") from None
    return text, False


def _platforms(key: str, value: list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    found: list[str] = []
    for j, item in enumerate(value):
        text = str(item).strip().lower()
        if not _PLATFORM.match(text):
            raise ConfigError(
                f"{key}[{j}]: expected os/arch[/variant] such as linux/arm64, got {item!r}"
            )
        found.append(text)
    if not found:
        raise ConfigError(f"{key}: an empty list syncs no platform; leave it out for all")
    return tuple(dict.fromkeys(found))


def sync_quota_reserve(value: int) -> int:
    if value < 0:
        raise ConfigError(f"mirror.sync_quota_reserve: must not be negative, got {value!r}")
    return value


def sync_jobs(value: int) -> int:
    if value < 1:
        raise ConfigError(f"mirror.sync_jobs: must be at least 1, got {value!r}")
    return value
