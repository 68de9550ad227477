from __future__ import annotations

import pytest

from pullthrough.upstream.auth import (
    MAX_TOKENS,
    TokenCache,
    parse_challenge,
    same_registrable_domain,
)


def test_bearer_challenge_as_docker_hub_sends_it() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull",
    }


def test_basic_challenge() -> None:
    challenge = parse_challenge('Basic realm="basic-realm"')
    assert challenge is not None and challenge.scheme == "basic"
    assert parse_challenge("") is None


@pytest.mark.parametrize(
    ("realm", "upstream", "allowed"),
    [
        ("https://auth.docker.io/token", "https://registry-1.docker.io", True),
        ("https://ghcr.io/token", "https://ghcr.io", True),
        ("https://evil.example/token", "https://registry-1.docker.io", False),
        ("https://docker.io.evil.example/token", "https://registry-1.docker.io", False),
        ("http://127.0.0.1:9000/token", "http://127.0.0.1:5000", True),
        ("http://127.0.0.2:9000/token", "http://127.0.0.1:5000", False),
        ("https://auth.example.co.uk/t", "https://reg.example.co.uk", True),
        ("https://other.co.uk/t", "https://reg.example.co.uk", False),
    ],
)
def test_credentials_only_go_to_the_upstreams_own_domain(
    realm: str, upstream: str, allowed: bool
) -> None:
    assert same_registrable_domain(realm, upstream) is allowed


def test_tokens_are_cached_per_scope_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("pullthrough.upstream.auth.time.monotonic", lambda: now[0])
    cache = TokenCache()
    cache.put("repository:a:pull", "tok-a", 60)
    assert cache.get("repository:a:pull") == "tok-a"
    assert cache.get("repository:b:pull") is None
    now[0] += 50
    assert cache.get("repository:a:pull") == "tok-a"
    now[0] += 6  # within the renewal margin of its 60 s lifetime
    assert cache.get("repository:a:pull") is None


def test_token_cache_keeps_at_most_its_cap_dropping_the_least_recently_used() -> None:
    cache = TokenCache(max_tokens=3)
    for name in ("a", "b", "c"):
        cache.put(f"repository:{name}:pull", f"tok-{name}", 300)
    assert cache.get("repository:a:pull") == "tok-a"  # a is now the most recently used
    cache.put("repository:d:pull", "tok-d", 300)
    assert len(cache) == 3
    assert cache.get("repository:b:pull") is None  # the least recently used went
    assert [cache.get(f"repository:{n}:pull") for n in "acd"] == ["tok-a", "tok-c", "tok-d"]


def test_token_cache_stays_bounded_under_many_made_up_scopes() -> None:
    cache = TokenCache()
    for i in range(20_000):
        cache.put(f"repository:junk/{i}:pull", "x" * 100, 300)
    assert len(cache) == MAX_TOKENS
    assert cache.get("repository:junk/19999:pull") is not None
    assert cache.get("repository:junk/0:pull") is None


def test_an_expired_token_is_dropped_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("pullthrough.upstream.auth.time.monotonic", lambda: now[0])
    cache = TokenCache()
    cache.put("repository:a:pull", "tok-a", 60)
    now[0] += 120
    assert cache.get("repository:a:pull") is None
    assert len(cache) == 0
