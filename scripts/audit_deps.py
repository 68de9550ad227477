#!/usr/bin/env python3
"""Audit requirements.lock against the package index's vulnerability data.

pip-audit asks the index for one release at a time (``/pypi/NAME/VERSION/json``) or asks
OSV; from this project's machines neither answers (the per-release endpoint is 404 for every
package and OSV is unreachable), so pip-audit reports nothing it could check. The project
endpoint (``/pypi/NAME/json``) does answer, and it carries the same advisory data (PyPA
advisory database / OSV, as ``vulnerabilities``) for the project's newest release. So:

- a pinned release that is the newest: its advisories are known exactly; any one fails;
- a pinned release older than the newest: an advisory still open in the newest release
  most likely affects the older one too, so it fails as well; advisories fixed between the
  pin and the newest cannot be seen from here, so the package is listed as "partly checked"
  (``--strict`` fails on those; refreshing the lock with scripts/lock.sh clears them);
- a pinned release that was yanked fails (releases are yanked for security too);
- a package the index does not know, or an index that cannot be reached, fails: an audit
  that could not look is not clean.

Exit status: 0 clean, 1 findings, 2 the audit could not run. Standard library only, so it
runs before (or without) the project's venv.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def default_index_url() -> str:
    """The JSON API base of the index pip installs from by default (taken from pip itself)."""
    from pip._internal.models.index import PyPI

    return str(PyPI.pypi_url)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> list[tuple[str, str]]:
    pins: list[tuple[str, str]] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not a pinned requirement (NAME==VERSION): {raw!r}")
        pins.append((match.group(1), match.group(2)))
    return pins


@dataclass
class Result:
    name: str
    version: str
    newest: str = ""
    findings: list[str] = field(default_factory=list)
    partly_checked: bool = False
    error: str = ""


def fetch_project(
    index_url: str, name: str, timeout: float, tries: int = 3
) -> dict[str, object]:
    """The project's JSON; a connection that fails is tried again (twice, after 1 s and
    2 s): one lost request must not fail CI. An answer (404 too) is final."""
    url = f"{index_url.rstrip('/')}/{canonical(name)}/json"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    for attempt in range(1, tries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = json.load(response)
            break
        except urllib.error.HTTPError:
            raise
        except OSError:
            if attempt == tries:
                raise
            time.sleep(attempt)
    if not isinstance(data, dict):
        raise ValueError("the index's answer is not a JSON object")
    return data


def describe(advisory: dict[str, object]) -> str:
    ident = str(advisory.get("id") or "?")
    aliases = [str(a) for a in advisory.get("aliases") or [] if a != ident]  # type: ignore[attr-defined]
    fixed = [str(v) for v in advisory.get("fixed_in") or []]  # type: ignore[attr-defined]
    text = ident + (f" ({', '.join(aliases)})" if aliases else "")
    text += f", fixed in {', '.join(fixed)}" if fixed else ", no fixed release"
    summary = str(advisory.get("summary") or advisory.get("details") or "").strip()
    if summary:
        text += f": {summary.splitlines()[0][:120]}"
    return text


def same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import Version
    except ImportError:  # pragma: no cover - only before the venv exists
        return a == b
    return bool(Version(a) == Version(b))


def audit_one(index_url: str, name: str, version: str, timeout: float) -> Result:
    result = Result(name, version)
    try:
        project = fetch_project(index_url, name, timeout)
    except urllib.error.HTTPError as exc:
        result.error = f"the index answered {exc.code} for this package"
        return result
    except (OSError, ValueError) as exc:
        result.error = f"could not ask the index: {exc}"
        return result
    info = project.get("info")
    releases = project.get("releases")
    if not isinstance(info, dict) or not isinstance(releases, dict):
        result.error = "the index's answer has no info/releases"
        return result
    result.newest = str(info.get("version", ""))
    files = next((f for v, f in releases.items() if same_version(v, version)), None)
    if files is None:
        result.error = f"the index has no release {version}"
        return result
    yanked = [f for f in files if isinstance(f, dict) and f.get("yanked")]
    if files and len(yanked) == len(files):
        reason = str(yanked[0].get("yanked_reason") or "no reason given")
        result.findings.append(f"release {version} was yanked: {reason}")
    advisories = project.get("vulnerabilities") or []
    if not isinstance(advisories, list):
        result.error = "the index's vulnerabilities field is not a list"
        return result
    is_newest = same_version(result.newest, version)
    seen: set[str] = set()  # one advisory is often listed under each of its ids (PYSEC, GHSA)
    for advisory in advisories:
        if not isinstance(advisory, dict) or advisory.get("withdrawn"):
            continue
        ids = {str(advisory.get("id"))} | {str(a) for a in advisory.get("aliases") or []}
        if ids & seen:
            continue
        seen |= ids
        where = "" if is_newest else f" (open in the newest release {result.newest})"
        result.findings.append(describe(advisory) + where)
    result.partly_checked = not is_newest
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?", default="requirements.lock", type=Path)
    parser.add_argument("--index-url", help="JSON API base (default: pip's default index)")
    parser.add_argument("--strict", action="store_true",
                        help="also fail on pins older than the newest release")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        pins = read_lock(args.lock)
    except (OSError, ValueError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    if not pins:
        print(f"audit: {args.lock} pins nothing", file=sys.stderr)
        return 2
    index_url = args.index_url or default_index_url()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: audit_one(index_url, *p, args.timeout), pins))

    errors = [r for r in results if r.error]
    vulnerable = [r for r in results if r.findings]
    partly = [r for r in results if r.partly_checked and not r.error]
    for r in vulnerable:
        for finding in r.findings:
            print(f"VULNERABLE {r.name}=={r.version}: {finding}")
    for r in partly:
        print(f"partly checked {r.name}=={r.version}: newest is {r.newest}; advisories fixed "
              "in between are not visible here (scripts/lock.sh refreshes the lock)")
    for r in errors:
        print(f"NOT AUDITED {r.name}=={r.version}: {r.error}")
    print(f"audit: {len(pins)} pinned packages, {len(vulnerable)} with known vulnerabilities, "
          f"{len(partly)} partly checked, {len(errors)} not audited")
    if vulnerable or (args.strict and partly):
        return 1
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
