"""``mirror.hosted`` and ``mirror.access`` actions: read, validated, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullthrough.clientauth.access import AccessRules
from pullthrough.config import ConfigError, load


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nhttp: {addr: 127.0.0.1:5000}\n" + text)
    return load(path, environ={})


def test_hosted_prefixes_and_their_settings_are_read(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "storage: {delete: {enabled: true}}\n"
        "mirror:\n  hosted: {repositories: [acme, team/images], max_manifest_size: 1MiB}\n",
    )
    hosted = config.hosted
    assert hosted is not None
    assert hosted.prefixes == ("acme", "team/images")
    assert hosted.max_manifest_size == 1024 * 1024 and hosted.delete_enabled
    assert hosted.holds("acme") and hosted.holds("acme/app") and hosted.holds("team/images/x")
    assert not hosted.holds("acmes/app") and not hosted.holds("team/other")
    assert config.warnings == ()


def test_no_hosted_section_means_everything_is_mirrored(tmp_path: Path) -> None:
    assert _load(tmp_path, "").hosted is None


@pytest.mark.parametrize(
    ("prefix", "why"),
    [("ghcr.io/acme", "registry host"), ("Acme", "not a repository name"), ("a//b", "not a")],
)
def test_a_bad_hosted_prefix_is_refused_naming_the_key(
    tmp_path: Path, prefix: str, why: str
) -> None:
    with pytest.raises(ConfigError, match=r"mirror\.hosted\.repositories\[1\]") as info:
        _load(tmp_path, f"mirror:\n  hosted: {{repositories: [ok, '{prefix}']}}\n")
    assert why in str(info.value)


def test_bad_hosted_sizes_and_actions_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mirror\.hosted\.max_manifest_size"):
        _load(tmp_path, "mirror:\n  hosted: {repositories: [a], max_manifest_size: lots}\n")
    with pytest.raises(ConfigError, match=r"mirror\.access\[0\]\.actions"):
        _load(tmp_path, "mirror:\n  access: [{repositories: [a/**], actions: [pull, own]}]\n")


def test_push_is_granted_only_where_a_rule_names_it(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "mirror:\n  access:\n"
        "    - {repositories: ['**']}\n"
        "    - {repositories: [acme/**], actions: [pull, push]}\n",
    )
    rules = AccessRules(config.access)
    assert rules.allows(None, "docker.io", "acme/app")
    assert rules.grants(None, "docker.io", "acme/app", "push")
    assert not rules.grants(None, "docker.io", "other/app", "push")
    assert not rules.grants(None, "docker.io", "acme/app", "delete")
    assert not AccessRules(()).grants(None, "docker.io", "acme/app", "push")


def test_hosted_repositories_are_served_in_cluster_mode(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "mirror:\n  hosted: {repositories: [acme]}\n"
        "  cluster: {redis: {addr: 127.0.0.1:6379, password: pw}}\n",
    )
    assert config.hosted is not None and config.cluster is not None


def test_gc_grace_is_a_duration_an_hour_by_default(tmp_path: Path) -> None:
    default = _load(tmp_path, "mirror:\n  hosted: {repositories: [acme]}\n").hosted
    assert default is not None and default.gc_grace == 3600.0
    set_ = _load(tmp_path, "mirror:\n  hosted: {repositories: [acme], gc_grace: 10m}\n").hosted
    assert set_ is not None and set_.gc_grace == 600.0
    with pytest.raises(ConfigError, match="mirror.hosted.gc_grace"):
        _load(tmp_path, "mirror:\n  hosted: {repositories: [acme], gc_grace: soon}\n")
