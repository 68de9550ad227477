"""Per-repository pull rules for clients (``mirror.access``), for when ``auth.token`` is not
used: which users may pull which repositories through the mirror.

A rule lists repository patterns and, optionally, the users it is for. A request may pull a
repository when some rule matches both; with no rules configured everyone who authenticated
(or everyone, without ``auth:``) may pull everything, as before.

Patterns are matched against ``<registry>/<repository>`` as the mirror resolved the request
(``docker.io/library/alpine``, ``ghcr.io/acme/app``), so one rule covers every way a client
can name that repository: through the default upstream, a path prefix, or ``?ns=``. In a
pattern, ``*`` matches within one path component and ``**`` across components. A pattern
whose first component is not a registry host is relative to the default upstream, with
Docker Hub's rule that a one-component name is under ``library/`` (``alpine``, ``*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PATTERN_CHARS = re.compile(r"^[a-z0-9*._:/-]+$")
# Distribution's name grammar, with * allowed where a letter may stand.
_COMPONENT = re.compile(r"^[a-z0-9*]+(?:[._-]+[a-z0-9*]+)*$")
_REGISTRY = re.compile(r"^[a-z0-9*]+(?:[.-]+[a-z0-9*]+)*(?::[0-9]+)?$")
ANY_USER = "*"


class PatternError(ValueError):
    """A repository pattern that cannot be read."""


def is_registry_component(part: str) -> bool:
    """A first name component that names a registry host (Docker's rule): it has a dot or a
    port, or is ``localhost``. ``**`` spans registries too."""
    return "." in part or ":" in part or part in ("localhost", "**")


def qualify(pattern: str, default_registry: str, docker_hub: bool) -> str:
    """``pattern`` as ``<registry>/<repository>``; raises PatternError if malformed."""
    text = pattern.strip()
    if not text or not _PATTERN_CHARS.match(text):
        raise PatternError(
            f"{pattern!r} is not a repository pattern: use lower-case names, '/', and * or **"
        )
    parts = text.split("/")
    if any(not part for part in parts):
        raise PatternError(f"{pattern!r} has an empty path component")
    if any("***" in part or ("**" in part and part != "**") for part in parts):
        raise PatternError(f"{pattern!r}: ** must be a whole path component")
    registry = is_registry_component(parts[0])
    for i, part in enumerate(parts):
        grammar = _REGISTRY if registry and i == 0 else _COMPONENT
        if part != "**" and not grammar.match(part):
            raise PatternError(f"{pattern!r}: {part!r} is not a valid name component")
    if registry:
        if len(parts) == 1 and parts[0] != "**":
            raise PatternError(f"{pattern!r} names a registry but no repository (add /**)")
        return text
    if docker_hub and len(parts) == 1:
        parts = ["library", *parts]
    return "/".join([default_registry, *parts])


def compile_pattern(qualified: str) -> re.Pattern[str]:
    out = []
    for piece in re.split(r"(\*\*|\*)", qualified):
        if piece == "**":
            out.append(".*")
        elif piece == "*":
            out.append("[^/]*")
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out))


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One ``mirror.access`` entry, its patterns already qualified."""

    repositories: tuple[str, ...]
    users: tuple[str, ...] | None = None  # None: everyone, anonymous included; "*": any user
    actions: tuple[str, ...] = ("pull",)  # push and delete: hosted repositories only


class AccessRules:
    def __init__(self, rules: Iterable[AccessRule]) -> None:
        self._rules = [
            (tuple(compile_pattern(p) for p in rule.repositories), rule.users, rule.actions)
            for rule in rules
        ]

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def allows(self, user: str | None, registry: str, repo: str) -> bool:
        """May ``user`` (None: not authenticated) pull ``repo`` of ``registry``?"""
        if not self._rules:
            return True
        name = f"{registry}/{repo}"
        return any(
            "pull" in actions
            and self._for(user, users)
            and any(p.fullmatch(name) for p in patterns)
            for patterns, users, actions in self._rules
        )

    def grants(self, user: str | None, registry: str, repo: str, action: str) -> bool:
        """Does a rule explicitly grant ``action`` (push, delete) on ``repo`` to ``user``?
        Unlike pulls, writes are never allowed by the absence of rules: anonymous push
        needs a rule without ``users`` that names it."""
        name = f"{registry}/{repo}"
        return any(
            action in actions
            and self._for(user, users)
            and any(p.fullmatch(name) for p in patterns)
            for patterns, users, actions in self._rules
        )

    @staticmethod
    def _for(user: str | None, users: tuple[str, ...] | None) -> bool:
        if users is None:
            return True
        return user is not None and (ANY_USER in users or user in users)
