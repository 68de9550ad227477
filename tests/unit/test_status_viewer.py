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


def test_fetches_in_flight_are_listed_only_for_repositories_the_viewer_may_pull() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from pullthrough.server.status.inflight import fetches

    def fetch(upstream: str, repo: str, digest: str) -> SimpleNamespace:
        return SimpleNamespace(
            upstream=SimpleNamespace(name=upstream), repo=repo, digest=digest, written=10,
            size=100, readers=2, rate=lambda: 5.0,
        )

    running = [fetch("docker.io", "acme/secret", "sha256:" + "a" * 64),
               fetch("docker.io", "library/alpine", "sha256:" + "b" * 64)]
    mirror = cast(Any, SimpleNamespace(fetches=SimpleNamespace(running=lambda: running)))
    rules = AccessRules((AccessRule(("docker.io/library/*",)),))
    who = Viewer(user=None, access=rules, grant=None, default_upstream="docker.io")
    assert fetches(mirror, may_pull=who.may_pull) == [{
        "upstream": "docker.io", "repository": "library/alpine", "digest": "sha256:" + "b" * 64,
        "bytes": 10, "size": 100, "bytes_per_second": 5, "clients": 2,
    }]
