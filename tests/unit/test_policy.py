"""``mirror.policy``: how rules are read, which rule decides a request, which never can."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pullthrough.config import ConfigError, load
from pullthrough.mirror.policy import Policy, never_matching

ISSUE_POLICY = [
    {"upstream": "docker.io", "repositories": ["library/ubuntu"], "tags": ["1*.04"],
     "action": "deny"},
    {"upstream": "docker.io", "repositories": ["library/**", "bitnami/*"], "action": "allow"},
    {"upstream": "*", "repositories": ["**"], "action": "deny"},
]


def _load(tmp_path: Path, policy: object, **mirror: object) -> Policy:
    path = tmp_path / "config.yml"
    doc = {
        "version": 0.1,
        "mirror": {
            "policy": policy,
            "upstreams": [{"name": "ghcr.io", "remoteurl": "https://ghcr.io"}],
            **mirror,
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return Policy(load(path, environ={}).policy)


def test_first_matching_rule_decides_and_no_match_allows(tmp_path: Path) -> None:
    policy = _load(tmp_path, ISSUE_POLICY)
    assert not policy.tag_allowed("docker.io", "library/ubuntu", "14.04")
    assert not policy.tag_allowed("docker.io", "library/ubuntu", "18.04")
    assert policy.tag_allowed("docker.io", "library/ubuntu", "24.10")
    assert policy.tag_allowed("docker.io", "library/ubuntu", "latest")
    assert policy.tag_allowed("docker.io", "bitnami/redis", "7")
    assert not policy.tag_allowed("docker.io", "bitnami/charts/redis", "7")  # * is one part
    assert policy.tag_allowed("docker.io", "library/a/b/c", "1")  # ** is any number
    assert not policy.tag_allowed("ghcr.io", "acme/app", "1")
    assert not policy.tag_allowed("docker.io", "acme/app", "1")
    assert Policy(()).tag_allowed("docker.io", "acme/app", "1")
    open_policy = _load(tmp_path, ISSUE_POLICY[:1])
    assert open_policy.tag_allowed("ghcr.io", "acme/app", "1")  # no rule matches: allow


def test_a_tag_deny_leaves_the_repository_and_makes_digests_go_through_tags(
    tmp_path: Path,
) -> None:
    policy = _load(tmp_path, ISSUE_POLICY)
    # Blobs and the tag list of ubuntu: decided by the rule without tags.
    assert policy.repository_rule("docker.io", "library/ubuntu") is policy.rules[1]
    assert policy.first_tag_rule("docker.io", "library/ubuntu") is policy.rules[0]
    assert policy.first_tag_rule("docker.io", "library/alpine") is None
    denied = policy.repository_rule("ghcr.io", "acme/app")
    assert denied is not None and denied.action == "deny"


def test_an_allow_rule_with_tags_opens_the_repository_for_those_tags_only(
    tmp_path: Path,
) -> None:
    policy = _load(
        tmp_path,
        [
            {"upstream": "ghcr.io", "repositories": ["acme/app"], "tags": ["v*"],
             "action": "allow"},
            {"upstream": "*", "repositories": ["**"], "action": "deny"},
        ],
    )
    assert policy.tag_allowed("ghcr.io", "acme/app", "v1.2")
    assert not policy.tag_allowed("ghcr.io", "acme/app", "latest")
    rule = policy.repository_rule("ghcr.io", "acme/app")
    assert rule is not None and rule.action == "allow"  # its layers may be fetched
    assert policy.first_tag_rule("ghcr.io", "acme/app") is policy.rules[0]


def test_one_component_patterns_on_docker_hub_are_under_library(tmp_path: Path) -> None:
    policy = _load(tmp_path, [{"upstream": "docker.io", "repositories": ["ubuntu", "*"],
                               "action": "deny"}])
    assert policy.rules[0].repositories == ("library/ubuntu", "library/*")
    assert not policy.tag_allowed("docker.io", "library/nginx", "1")
    assert policy.tag_allowed("docker.io", "acme/nginx", "1")


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"upstream": "docker.io", "repositories": ["x"]}, "mirror.policy[0].action"),
        ({"upstream": "docker.io", "repositories": ["x"], "action": "block"},
         "mirror.policy[0].action"),
        ({"repositories": ["x"], "action": "deny"}, "mirror.policy[0].upstream"),
        ({"upstream": "Docker Hub", "repositories": ["x"], "action": "deny"},
         "mirror.policy[0].upstream"),
        ({"upstream": "docker.io", "action": "deny"}, "mirror.policy[0].repositories"),
        ({"upstream": "docker.io", "repositories": ["a//b"], "action": "deny"},
         "mirror.policy[0].repositories[0]"),
        ({"upstream": "docker.io", "repositories": ["ok", "Upper"], "action": "deny"},
         "mirror.policy[0].repositories[1]"),
        ({"upstream": "docker.io", "repositories": ["a/**b"], "action": "deny"},
         "mirror.policy[0].repositories[0]"),
        ({"upstream": "docker.io", "repositories": ["x"], "tags": [], "action": "deny"},
         "mirror.policy[0].tags"),
        ({"upstream": "docker.io", "repositories": ["x"], "tags": ["v1", "a/b"],
          "action": "deny"}, "mirror.policy[0].tags[1]"),
        ({"upstream": "docker.io", "repositories": "x", "action": "deny"},
         "mirror.policy[0].repositories"),
    ],
)
def test_a_bad_rule_is_an_error_naming_its_key(tmp_path: Path, entry: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, [entry])
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_rules_that_can_never_match_are_flagged(tmp_path: Path) -> None:
    policy = _load(
        tmp_path,
        [
            *ISSUE_POLICY[:2],
            {"upstream": "docker.io", "repositories": ["library/nginx"], "action": "deny"},
            {"upstream": "quay.io", "repositories": ["**"], "action": "deny"},
            {"upstream": "ghcr.io", "repositories": ["acme/*"], "tags": ["v?"],
             "action": "allow"},
            {"upstream": "ghcr.io", "repositories": ["acme/app"], "tags": ["v1"],
             "action": "deny"},
            {"upstream": "ghcr.io", "repositories": ["acme/**"], "action": "deny"},
        ],
    )
    flagged = {rule.index: reason for rule, reason in never_matching(policy, ["docker.io",
                                                                               "ghcr.io"])}
    assert set(flagged) == {2, 3, 5}
    assert "mirror.policy[1]" in flagged[2]
    assert "quay.io" in flagged[3]
    assert "mirror.policy[4]" in flagged[5]
    # With allow_any_upstream, any upstream name may come.
    assert 3 not in {r.index for r, _ in never_matching(policy, ["docker.io"],
                                                         any_upstream=True)}


def test_check_prints_the_rules_as_understood_and_flags_never_matching_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pullthrough.cli import main

    path = tmp_path / "config.yml"
    policy = [
        *ISSUE_POLICY,
        {"upstream": "docker.io", "repositories": ["nginx"], "action": "allow"},
    ]
    path.write_text(yaml.safe_dump({"version": 0.1, "mirror": {"policy": policy}}))
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "mirror.policy[0]: deny upstream docker.io repositories library/ubuntu tags 1*.04" in out
    assert "mirror.policy[3]: allow upstream docker.io repositories library/nginx" in out
    assert "warning: mirror.policy[3] can never match: every request it matches is decided " \
        "by mirror.policy[1]" in err
    assert "mirror.policy[0] can never" not in err

