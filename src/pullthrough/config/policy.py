"""``mirror.policy`` (what may be mirrored) and ``mirror.pins`` (what is kept for good), read
into PolicyRules and Pins with errors naming the key.

Only the shape is checked here (names, globs, actions); which rules can never match is
``pullthrough.mirror.policy``'s question, asked by ``pullthrough check`` and at start.
"""

from __future__ import annotations

import re

from pullthrough.config.model import DOCKER_HUB_NAME, Pin, PolicyRule
from pullthrough.config.schema import _Pin, _PolicyRule
from pullthrough.config.values import ConfigError

ACTIONS = ("allow", "deny")
# Distribution's name grammar with * where a letter may stand; ** is a whole component.
_COMPONENT = re.compile(r"^[a-z0-9*]+(?:[._-]+[a-z0-9*]+)*$")
_UPSTREAM = re.compile(r"^[a-z0-9*]([a-z0-9.*-]*[a-z0-9*])?(:[0-9*]{1,5})?$")
# A tag's characters, with * (any run) and ? (one character).
_TAG_GLOB = re.compile(r"^[A-Za-z0-9_.*?-]{1,128}$")


def policy_rules(entries: list[_PolicyRule]) -> tuple[PolicyRule, ...]:
    """Every ``mirror.policy`` entry validated, in order (the first match decides)."""
    return tuple(_rule(i, entry) for i, entry in enumerate(entries))


def _rule(i: int, entry: _PolicyRule) -> PolicyRule:
    key = f"mirror.policy[{i}]"
    if entry.action is None:
        raise ConfigError(f"{key}.action: required, allow or deny")
    action = entry.action.strip().lower()
    if action not in ACTIONS:
        raise ConfigError(f"{key}.action: expected allow or deny, got {entry.action!r}")
    if entry.upstream is None:
        raise ConfigError(f'{key}.upstream: required, an upstream name such as docker.io or "*"')
    upstream = entry.upstream.strip().lower()
    if not _UPSTREAM.match(upstream):
        raise ConfigError(
            f'{key}.upstream: expected an upstream name such as docker.io or "*", '
            f"got {entry.upstream!r}"
        )
    if not entry.repositories:
        raise ConfigError(
            f'{key}.repositories: required, a list of patterns such as library/* or "**"'
        )
    repositories = tuple(
        _repository(f"{key}.repositories[{j}]", pattern, hub=upstream == DOCKER_HUB_NAME)
        for j, pattern in enumerate(entry.repositories)
    )
    tags = None
    if entry.tags is not None:
        if not entry.tags:
            raise ConfigError(
                f"{key}.tags: an empty list matches no tag; leave tags out for a rule about "
                "the whole repository"
            )
        tags = tuple(_tag(f"{key}.tags[{j}]", glob) for j, glob in enumerate(entry.tags))
    return PolicyRule(i, upstream, repositories, tags, action)


def pins(entries: list[_Pin], upstreams: set[str]) -> tuple[Pin, ...]:
    """Every ``mirror.pins`` entry, one Pin per tag glob."""
    found: list[Pin] = []
    for i, entry in enumerate(entries):
        key = f"mirror.pins[{i}]"
        found.extend(pin_entry(key, entry.upstream, entry.repository, entry.tags, upstreams))
    return tuple(dict.fromkeys(found))


def pin_entry(
    key: str,
    upstream: str | None,
    repository: str | None,
    tags: list[str] | None,
    upstreams: set[str],
) -> list[Pin]:
    """One pin as given (config or ``pullthrough pin``), checked: a configured upstream, a
    repository name (no globs: a pin names what it keeps), tag globs."""
    name = (upstream or "").strip().lower()
    if name not in upstreams:
        raise ConfigError(
            f"{key}.upstream: expected a configured upstream ({', '.join(sorted(upstreams))}), "
            f"got {upstream!r}"
        )
    if not repository or "*" in repository:
        raise ConfigError(f"{key}.repository: required, a repository name such as library/alpine")
    repo = _repository(f"{key}.repository", repository, hub=name == DOCKER_HUB_NAME)
    if not tags:
        raise ConfigError(f'{key}.tags: required, a list of tag patterns such as ["3.*"]')
    return [Pin(name, repo, _tag(f"{key}.tags[{j}]", t)) for j, t in enumerate(tags)]


def _repository(key: str, pattern: str, *, hub: bool) -> str:
    text = str(pattern).strip()
    parts = text.split("/")
    for part in parts:
        if part == "**":
            continue
        if not part or "**" in part or not _COMPONENT.match(part):
            raise ConfigError(
                f"{key}: {pattern!r} is not a repository pattern: lower-case name components "
                "separated by /, with * (within one component) or ** (a whole component, "
                "any number of them)"
            )
    # On Docker Hub ``ubuntu`` is ``library/ubuntu``: the pattern means what clients mean.
    if hub and len(parts) == 1 and parts[0] != "**":
        return f"library/{text}"
    return text


def _tag(key: str, glob: str) -> str:
    text = str(glob).strip()
    if not _TAG_GLOB.match(text):
        raise ConfigError(
            f"{key}: {glob!r} is not a tag pattern: tag characters (letters, digits, _ . -) "
            "with * (any run) or ? (one character)"
        )
    return text
