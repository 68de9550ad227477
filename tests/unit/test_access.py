"""``mirror.access``: per-repository pull rules, their patterns and their config errors."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from pullthrough.clientauth.access import AccessRule, AccessRules, PatternError, qualify
from pullthrough.config import ConfigError, load


@pytest.mark.parametrize("pattern, qualified", [
    ("alpine", "docker.io/library/alpine"),
    ("*", "docker.io/library/*"),
    ("library/*", "docker.io/library/*"),
    ("acme/**", "docker.io/acme/**"),
    ("ghcr.io/acme/*", "ghcr.io/acme/*"),
    ("localhost:5000/x", "localhost:5000/x"),
    ("**", "**"),
    ("**/app", "**/app"),
])
def test_patterns_are_qualified_with_the_default_registry(pattern: str, qualified: str) -> None:
    assert qualify(pattern, "docker.io", docker_hub=True) == qualified


def test_without_docker_hub_one_component_names_stay_as_written() -> None:
    assert qualify("app", "registry.example.com", docker_hub=False) == "registry.example.com/app"


@pytest.mark.parametrize("pattern", ["", "Alpine", "a//b", "/a", "a/", "a**", "***", "ghcr.io",
                                     "a b", "../etc", "a/**x", "a/..", "-a", "ghcr.io:x/a"])
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(PatternError):
        qualify(pattern, "docker.io", docker_hub=True)


def rules(*entries: tuple[tuple[str, ...], tuple[str, ...] | None]) -> AccessRules:
    return AccessRules(AccessRule(r, u) for r, u in entries)


def test_star_stays_within_a_component_and_double_star_crosses() -> None:
    acl = rules((("docker.io/library/*", "ghcr.io/acme/**"), None))
    assert acl.allows(None, "docker.io", "library/alpine")
    assert not acl.allows(None, "docker.io", "library/a/b")
    assert not acl.allows(None, "docker.io", "other/alpine")
    assert acl.allows(None, "ghcr.io", "acme/team/app")
    assert not acl.allows(None, "ghcr.io", "acmex/app")
    assert not acl.allows(None, "quay.io", "acme/app")  # the registry is part of the name


def test_users_any_user_and_anonymous() -> None:
    acl = rules(
        (("docker.io/library/*",), None),  # everyone
        (("docker.io/team/*",), ("*",)),  # any authenticated user
        (("docker.io/secret/*",), ("alice",)),
    )
    assert acl.allows(None, "docker.io", "library/alpine")
    assert not acl.allows(None, "docker.io", "team/app")
    assert acl.allows("bob", "docker.io", "team/app")
    assert not acl.allows("bob", "docker.io", "secret/app")
    assert acl.allows("alice", "docker.io", "secret/app")


def test_no_rules_allow_everything() -> None:
    acl = rules()
    assert not acl.active
    assert acl.allows(None, "docker.io", "anything/at/all")


def _config(tmp_path: Path, text: str) -> Path:
    users = tmp_path / "htpasswd"
    users.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    path = tmp_path / "config.yml"
    path.write_text(text.replace("HTPASSWD", str(users)))
    return path


def test_rules_load_qualified(tmp_path: Path) -> None:
    config = load(_config(tmp_path, """
auth: {htpasswd: {realm: r, path: HTPASSWD}}
mirror:
  upstreams: [{name: ghcr.io, remoteurl: "https://ghcr.io"}]
  access:
    - repositories: [alpine, ghcr.io/acme/**]
    - repositories: ["team/*"]
      users: [alice]
"""), {})
    assert config.access == (
        AccessRule(("docker.io/library/alpine", "ghcr.io/acme/**")),
        AccessRule(("docker.io/team/*",), ("alice",)),
    )


@pytest.mark.parametrize("section, message", [
    ("auth: {htpasswd: {realm: r, path: HTPASSWD}}\nmirror: {access: [{users: [alice]}]}",
     "mirror.access[0].repositories: required"),
    ("mirror: {access: [{repositories: [x, 'Bad']}]}",
     "mirror.access[0].repositories[1]: 'Bad' is not a repository pattern"),
    ("mirror: {access: [{repositories: [quay.io/x]}]}",
     "mirror.access[0].repositories[0]: quay.io is not a mirrored registry"),
    ("mirror: {access: [{repositories: [x], users: [alice]}]}",
     "mirror.access[0].users: names users, but no client authenticates"),
    ("auth: {htpasswd: {realm: r, path: HTPASSWD}}\n"
     "mirror: {access: [{repositories: [x], users: ['a:b']}]}",
     "mirror.access[0].users: expected htpasswd user names"),
    ("mirror: {access: [{repositories: x}]}", "mirror.access[0].repositories: Input should be"),
])
def test_bad_rules_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(_config(tmp_path, section + "\n"), {})
    assert message in str(err.value)


def test_rules_with_token_auth_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.support.tokens import _make_key_and_cert

    _, cert = _make_key_and_cert("issuer")
    bundle = tmp_path / "issuer.pem"
    bundle.write_bytes(cert.public_bytes(Encoding.PEM))
    path = _config(tmp_path, f"""
auth: {{token: {{realm: "http://127.0.0.1:1/token", service: s, issuer: i,
                 rootcertbundle: {bundle}}}}}
mirror: {{access: [{{repositories: [x]}}]}}
""")
    with pytest.raises(ConfigError, match="mirror.access: with auth.token"):
        load(path, {})


def test_a_user_the_htpasswd_file_lacks_is_warned_about(tmp_path: Path) -> None:
    config = load(_config(tmp_path, """
auth: {htpasswd: {realm: r, path: HTPASSWD}}
mirror:
  access:
    - repositories: [x]
      users: [alice, bob, "*"]
"""), {})
    assert any(
        w.startswith("mirror.access[0].users: not in") and w.endswith(": bob")
        for w in config.warnings
    ), config.warnings
