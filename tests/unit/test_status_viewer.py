"""Who sees which repository on the status page: the decision a pull would get."""

from __future__ import annotations

from pullthrough.clientauth.access import AccessRule, AccessRules
from pullthrough.clientauth.tokens import Grant
from pullthrough.server.status.viewer import Viewer


def test_token_scopes_name_other_upstreams_behind_their_prefix() -> None:
    grant = Grant("alice", (
        ("repository", "library/alpine", frozenset({"pull"})),
        ("repository", "ghcr.io/acme/app", frozenset({"pull"})),
        ("repository", "acme/app", frozenset({"push"})),
    ))
    who = Viewer(user="alice", access=AccessRules(()), grant=grant, default_upstream="docker.io")
    assert who.may_pull("docker.io", "library/alpine")
    assert who.may_pull("ghcr.io", "acme/app")
    assert not who.may_pull("docker.io", "acme/app")  # push only
    assert not who.may_pull("quay.io", "library/alpine")  # another upstream's namesake


def test_access_rules_apply_to_the_viewer_as_to_a_pull() -> None:
    rules = AccessRules((
        AccessRule(("docker.io/library/*",)),
        AccessRule(("ghcr.io/acme/**",), users=("alice",)),
    ))
    alice = Viewer(user="alice", access=rules, grant=None, default_upstream="docker.io")
    anonymous = Viewer(user=None, access=rules, grant=None, default_upstream="docker.io")
    assert alice.may_pull("ghcr.io", "acme/app/x") and alice.may_pull("docker.io", "library/a")
    assert anonymous.may_pull("docker.io", "library/a")
    assert not anonymous.may_pull("ghcr.io", "acme/app")
