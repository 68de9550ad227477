"""``mirror.sync`` as configured: the issue's shape, errors naming the key, tags matched by
regular expression or semver range, and the quota a sync leaves alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pullthrough.config import ConfigError, load
from pullthrough.config.model import Config
from pullthrough.mirror.sync import Quota, claim_name, tag_matcher
from pullthrough.semver import parse_range

ISSUE_ENTRY = {
    "upstream": "docker.io",
    "repository": "library/alpine",
    "tags": r"^3\.2[0-9]$",
    "interval": "6h",
    "platforms": ["linux/amd64", "linux/arm64"],
}


def _load(tmp_path: Path, *entries: dict[str, Any], **mirror: Any) -> Config:
    doc = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
        "mirror": {"sync": list(entries), **mirror},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(doc))
    return load(path)


def test_the_issue_entry_is_read_as_written(tmp_path: Path) -> None:
    (entry,) = _load(tmp_path, ISSUE_ENTRY).sync
    assert (entry.upstream, entry.repository, entry.tags, entry.semver) == (
        "docker.io",
        "library/alpine",
        r"^3\.2[0-9]$",
        False,
    )
    assert entry.interval == 6 * 3600
    assert entry.platforms == ("linux/amd64", "linux/arm64")


def test_a_semver_range_and_docker_hub_short_names(tmp_path: Path) -> None:
    (entry,) = _load(tmp_path, {**ISSUE_ENTRY, "repository": "alpine", "tags": ">=3.19 <4"}).sync
    assert entry.repository == "library/alpine" and entry.semver


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"upstream": "ghcr.io"}, "mirror.sync[0].upstream: expected a configured upstream"),
        ({"repository": None}, "mirror.sync[0].repository: required"),
        ({"repository": "library/*"}, "mirror.sync[0].repository: required"),
        ({"tags": None}, "mirror.sync[0].tags: required"),
        ({"tags": "(3"}, "mirror.sync[0].tags: not a regular expression"),
        ({"tags": ">=3.x"}, "mirror.sync[0].tags: not a semver range"),
        ({"interval": None}, "mirror.sync[0].interval: required"),
        ({"interval": "soon"}, "mirror.sync[0].interval: expected a duration"),
        ({"interval": "10ms"}, "mirror.sync[0].interval: must be at least 1s"),
        ({"platforms": ["linux"]}, "mirror.sync[0].platforms[0]: expected os/arch"),
        ({"platforms": []}, "mirror.sync[0].platforms: an empty list"),
    ],
)
def test_bad_entries_name_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _load(tmp_path, {**ISSUE_ENTRY, **change})


def test_quota_reserve_and_jobs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mirror.sync_quota_reserve"):
        _load(tmp_path, ISSUE_ENTRY, sync_quota_reserve=-1)
    with pytest.raises(ConfigError, match="mirror.sync_jobs"):
        _load(tmp_path, ISSUE_ENTRY, sync_jobs=0)


def test_a_regex_is_searched_and_a_range_matches_plain_versions(tmp_path: Path) -> None:
    regex, semver = _load(tmp_path, ISSUE_ENTRY, {**ISSUE_ENTRY, "tags": ">=3.19 <4 || =5"}).sync
    tags = ["3.19", "3.20", "3.29", "3.20-alpine", "v3.21", "4.0", "5", "latest", "13.20"]
    assert [t for t in tags if tag_matcher(regex)(t)] == ["3.20", "3.29"]
    assert [t for t in tags if tag_matcher(semver)(t)] == ["3.19", "3.20", "3.29", "v3.21", "5"]
    assert claim_name(regex) != claim_name(semver)


def test_caret_and_tilde_ranges() -> None:
    assert parse_range("=0 || ^1.2").matches("1.9.9") and not parse_range("^1.2").matches("2.0")
    assert parse_range("~1.2").matches("1.2.7") and not parse_range("~1.2").matches("1.3")


async def test_quota_counts_promised_gets_and_keeps_the_reserve() -> None:
    rate = SimpleNamespace(remaining=None, lowest=None)
    upstream = SimpleNamespace(name="docker.io", rate_limit=rate)
    quota = Quota(upstream, reserve=10)  # type: ignore[arg-type]
    assert quota.may_spend()  # an upstream that says nothing is not limited
    rate.remaining = rate.lowest = 12
    assert await quota.take()
    assert quota.may_spend()  # 12 - 1 promised - 1 more = 10: the reserve is kept
    assert await quota.take()
    assert not quota.may_spend()
    # No room while GETs are unanswered: wait for them, then decide.
    third = asyncio.ensure_future(quota.take())
    await asyncio.sleep(0.01)
    assert not third.done()
    rate.lowest = 11  # the first GET answered, one pull spent: 11 - 1 - 1 < 10
    await quota.give_back()
    await asyncio.sleep(0.01)
    assert not third.done()
    rate.lowest = 10
    await quota.give_back()
    assert await asyncio.wait_for(third, 1) is False
