"""Semantic-version ranges over tags, as ``mirror.sync`` writes them: ``>=3.19 <4``.

A range is comparators joined by spaces (all must hold), alternatives joined by ``||``;
a comparator is ``>=``, ``>``, ``<=``, ``<``, ``=`` (or none: equal) followed by a version
of one to three numbers (``3``, ``3.19``, ``3.19.1``), with a leading ``v`` allowed;
missing numbers are 0. ``^1.2`` (same major) and ``~1.2`` (same minor) are accepted too.

Only tags that are plain versions (``3.19``, ``v3.19.1``) can match: ``3.19-alpine`` or
``3.19.0-rc1`` never does, since a suffix cannot be told apart from a variant name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^v?([0-9]{1,9})(?:\.([0-9]{1,9}))?(?:\.([0-9]{1,9}))?$")
_COMPARATOR = re.compile(r"^(>=|<=|>|<|=|\^|~)?(.+)$")
# The characters a range starts with: how a range is told apart from a regular expression.
# Not ``^``: ``^3\.2[0-9]$`` is a regular expression (a caret range may follow a first
# comparator, as in ``=1 || ^2``).
RANGE_START = (">", "<", "=", "~")

Version = tuple[int, int, int]


class RangeError(ValueError):
    """A range that cannot be read; the message says which part."""


def parse_version(text: str) -> Version | None:
    """``v3.19`` → (3, 19, 0); None when ``text`` is not a plain version."""
    match = _VERSION.match(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor or 0), int(patch or 0)


@dataclass(frozen=True, slots=True)
class _Bound:
    op: str  # one of >= > <= < =
    version: Version

    def holds(self, v: Version) -> bool:
        if self.op == ">=":
            return v >= self.version
        if self.op == ">":
            return v > self.version
        if self.op == "<=":
            return v <= self.version
        if self.op == "<":
            return v < self.version
        return v == self.version


@dataclass(frozen=True, slots=True)
class Range:
    """A parsed range; ``matches`` says whether a tag is a version inside it."""

    text: str
    alternatives: tuple[tuple[_Bound, ...], ...]

    def matches(self, tag: str) -> bool:
        version = parse_version(tag)
        if version is None:
            return False
        return any(all(b.holds(version) for b in bounds) for bounds in self.alternatives)


def parse_range(text: str) -> Range:
    """Raises RangeError naming the part that is not a comparator."""
    alternatives: list[tuple[_Bound, ...]] = []
    for part in text.split("||"):
        words = _joined(part.split())
        if not words:
            raise RangeError(f"empty alternative in {text!r}")
        bounds: list[_Bound] = []
        for word in words:
            bounds.extend(_comparator(word))
        alternatives.append(tuple(bounds))
    return Range(text, tuple(alternatives))


def _joined(words: list[str]) -> list[str]:
    """``>= 3.19`` written with a space is ``>=3.19``."""
    out: list[str] = []
    for word in words:
        if out and out[-1] in (">=", "<=", ">", "<", "=", "^", "~"):
            out[-1] += word
        else:
            out.append(word)
    return out


def _comparator(word: str) -> list[_Bound]:
    match = _COMPARATOR.match(word)
    assert match is not None  # .+ matches any non-empty word
    op, rest = match.group(1) or "=", match.group(2)
    version = parse_version(rest)
    if version is None:
        raise RangeError(f"{word!r} is not a comparator such as >=3.19 or <4")
    major, minor, _ = version
    if op == "^":
        return [_Bound(">=", version), _Bound("<", (major + 1, 0, 0))]
    if op == "~":
        return [_Bound(">=", version), _Bound("<", (major, minor + 1, 0))]
    return [_Bound(op, version)]
