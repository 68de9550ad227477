"""What may be mirrored (``mirror.policy``): the operator's allow and deny rules.

Rules are decided on the resolved (upstream, repository, tag), after ``?ns=``, path
prefixes and Docker Hub's ``library/``, before the store or the upstream is asked; the
first rule that matches decides, and no match allows.

- A manifest by tag: the first rule whose upstream, repository and (if it has any) tags
  match.
- The repository as a whole (blobs, the tag list): the first rule without tags that
  matches, or an *allow* rule with tags (the repository serves at least those tags).
  A *deny* rule with tags denies only those tags, never the whole repository.
- A manifest by digest: as the repository; and when a rule with tags applies to the
  repository (matches it before a rule without tags does), only a digest reached through
  an allowed tag (its resolution, or a manifest an index it resolved to lists), which
  ``Provenance.reached_through`` finds in the index. Otherwise a pull by digest would get
  around a tag deny.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pullthrough.clientauth.access import compile_pattern
from pullthrough.config.model import PolicyRule
from pullthrough.errors import Denied


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: PolicyRule
    upstream: re.Pattern[str]
    repositories: tuple[re.Pattern[str], ...]
    tags: tuple[re.Pattern[str], ...] | None

    def matches(self, upstream: str, repo: str) -> bool:
        return bool(self.upstream.fullmatch(upstream)) and any(
            p.fullmatch(repo) for p in self.repositories
        )

    def matches_tag(self, tag: str) -> bool:
        return self.tags is None or any(p.fullmatch(tag) for p in self.tags)


class Policy:
    """``mirror.policy`` compiled; immutable (a reload builds a new one)."""

    def __init__(self, rules: Iterable[PolicyRule] = ()) -> None:
        self.rules = tuple(rules)
        self._compiled = tuple(
            _Compiled(
                rule,
                re.compile(fnmatch.translate(rule.upstream)),
                tuple(compile_pattern(p) for p in rule.repositories),
                None if rule.tags is None else tuple(_tag_glob(t) for t in rule.tags),
            )
            for rule in self.rules
        )

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def tag_rule(self, upstream: str, repo: str, tag: str) -> PolicyRule | None:
        """The rule that decides a pull of ``repo:tag``, or None (allowed, no rule)."""
        for c in self._compiled:
            if c.matches(upstream, repo) and c.matches_tag(tag):
                return c.rule
        return None

    def repository_rule(self, upstream: str, repo: str) -> PolicyRule | None:
        """The rule that decides the repository as a whole, or None (allowed)."""
        for c in self._compiled:
            if c.matches(upstream, repo) and (c.tags is None or c.rule.action == "allow"):
                return c.rule
        return None

    def first_tag_rule(self, upstream: str, repo: str) -> PolicyRule | None:
        """The first rule with tags that applies to the repository (matches it before a
        rule without tags does), or None. With one, a manifest digest is readable only
        through an allowed tag."""
        for c in self._compiled:
            if c.matches(upstream, repo):
                return c.rule if c.tags is not None else None
        return None

    def tag_allowed(self, upstream: str, repo: str, tag: str) -> bool:
        rule = self.tag_rule(upstream, repo, tag)
        return rule is None or rule.action == "allow"

    def repository_allowed(self, upstream: str, repo: str) -> bool:
        rule = self.repository_rule(upstream, repo)
        return rule is None or rule.action == "allow"

    def check_repository(self, upstream: str, repo: str, name: str) -> None:
        """Raises Denied when the repository may not be mirrored."""
        rule = self.repository_rule(upstream, repo)
        if rule is not None and rule.action == "deny":
            raise denied(f"{upstream}/{repo}", rule, name)

    def check_tag(self, upstream: str, repo: str, tag: str, name: str) -> None:
        """Raises Denied when ``repo:tag`` may not be mirrored."""
        rule = self.tag_rule(upstream, repo, tag)
        if rule is not None and rule.action == "deny":
            raise denied(f"{upstream}/{repo}:{tag}", rule, name)


def denied(what: str, rule: PolicyRule, name: str) -> Denied:
    """The 403 a client gets, naming the rule so the operator can find it."""
    return Denied(
        f"{what} may not be mirrored: denied by {rule.key} ({rule.describe()})",
        detail={"name": name, "rule": rule.key},
    )


def never_matching(
    policy: Policy, upstreams: Iterable[str], *, any_upstream: bool = False
) -> list[tuple[PolicyRule, str]]:
    """Rules that can never decide a request, with the reason: an upstream name nothing
    is mirrored from, or every request they match is decided by an earlier rule."""
    names = tuple(upstreams)
    found: list[tuple[PolicyRule, str]] = []
    for i, c in enumerate(policy._compiled):
        rule = c.rule
        literal = "*" not in rule.upstream and "?" not in rule.upstream
        if not any_upstream and not any(c.upstream.fullmatch(n) for n in names):
            what = "is not a mirrored upstream" if literal else "matches no mirrored upstream"
            found.append((rule, f"upstream {rule.upstream} {what} ({', '.join(names)})"))
            continue
        for earlier in policy._compiled[:i]:
            if _covers(earlier, c):
                found.append((rule, f"every request it matches is decided by {earlier.rule.key}"))
                break
    return found


def _covers(earlier: _Compiled, later: _Compiled) -> bool:
    """Whether every (upstream, repository, tag) ``later`` matches is matched by
    ``earlier`` (sound, not complete: a False may still be covered)."""
    if not earlier.upstream.fullmatch(_as_text(later.rule.upstream)):
        return False
    if not all(
        any(p.fullmatch(_as_text(r)) for p in earlier.repositories)
        for r in later.rule.repositories
    ):
        return False
    if earlier.tags is None:
        return True
    if later.rule.tags is None:
        return False
    return all(any(p.fullmatch(_as_text(t)) for p in earlier.tags) for t in later.rule.tags)


def _as_text(pattern: str) -> str:
    """A pattern as a name an earlier pattern must match for all it stands for: ``**``
    spans components (only ``**`` or ``.*`` match it), ``*`` and ``?`` stand for
    characters no name has (only a wildcard matches them)."""
    return pattern.replace("**", "\x01/\x01").replace("*", "\x01").replace("?", "\x01")


def _tag_glob(glob: str) -> re.Pattern[str]:
    # Tags have no "/" and no "[": fnmatch's translation is exactly * and ?.
    return re.compile(fnmatch.translate(glob))
