"""The OCI distribution-spec conformance program, run against a live registry.

The program is not part of pullthrough: it is built from the distribution-spec repository
(``conformance/`` folder, ``go build``) and found at ``$OCI_CONFORMANCE`` or, in the
team's checkout, ``../shared/tools/oci-conformance/conformance``. Tests that need it skip
with a message saying how to get it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import clean_env

_REPO_ROOT = Path(__file__).resolve().parents[2]
_CANDIDATES = (
    Path("/work/shared/tools/oci-conformance/conformance"),
    _REPO_ROOT.parent / "shared" / "tools" / "oci-conformance" / "conformance",
    _REPO_ROOT.parent.parent / "shared" / "tools" / "oci-conformance" / "conformance",
)

HOW_TO_GET = (
    "the OCI conformance program is not installed: build it with Go from "
    "github.com/opencontainers/distribution-spec, folder conformance/ "
    "(`cd conformance && CGO_ENABLED=0 go build -o conformance .`), "
    "and set OCI_CONFORMANCE=/path/to/conformance"
)


def program() -> Path:
    """The conformance program, or a skip naming how to get it."""
    configured = os.environ.get("OCI_CONFORMANCE")
    for candidate in [Path(configured)] if configured else _CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(HOW_TO_GET)


@dataclass
class Outcome:
    """What one run found: passing leaves, failing leaves (with reasons), the summary."""

    returncode: int
    output: str
    passed: int
    failures: list[str] = field(default_factory=list)
    verdict: str | None = None  # the program's own "OCI Conformance Result: Pass|FAIL"

    @property
    def summary(self) -> str:
        """The program's own counts (``OCI Conformance Result`` block), else the leaves'."""
        counts = dict(re.findall(r"^  (Pass|FAIL|Skip|Disabled)\.+:\s+(\d+)$", self.output, re.M))
        if counts:
            return (
                f"{self.verdict}: {counts.get('Pass', '?')} passed, {counts.get('FAIL', '?')} "
                f"failed, {counts.get('Skip', '?')} skipped, {counts.get('Disabled', '?')} disabled"
            )
        return f"{self.passed} passed, {len(self.failures)} failed"


def run(
    registry_host: str,
    workdir: Path,
    *,
    settings: dict[str, str],
    timeout: float = 600.0,
) -> Outcome:
    """Run the program against ``registry_host`` (plain HTTP) with ``settings`` (its
    ``OCI_*`` variables) in a scratch ``workdir``; returns the parsed tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = clean_env(
        {
            "OCI_REGISTRY": registry_host,
            "OCI_TLS": "disabled",
            "OCI_RESULTS_DIR": str(workdir / "results"),
            **settings,
        }
    )
    proc = subprocess.run(
        [str(program())],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    (workdir / "run.out").write_text(output)
    return parse(proc.returncode, output)


_LEAF = re.compile(r"^\s*(?P<path>OCI Conformance Test.*?): (?P<result>Pass|FAIL|Disabled|Skip)$")
_VERDICT = re.compile(r"^OCI Conformance Result: (?P<verdict>\S+)", re.MULTILINE)


def parse(returncode: int, output: str) -> Outcome:
    """Count failing leaves as the program's README says: a ``FAIL`` line followed by a
    reason line (`` - ...``); parents repeat their children's failures."""
    passed = 0
    failures: list[str] = []
    pending: str | None = None
    for line in output.splitlines():
        leaf = _LEAF.match(line)
        if leaf:
            pending = leaf["path"] if leaf["result"] == "FAIL" else None
            passed += leaf["result"] == "Pass"
        elif re.match(r"^ +- ", line) and pending is not None:
            failures.append(f"{pending}: {line.strip()[2:]}")
            pending = None
    # The verdict line, not the exit status: in read-only mode this build panics while
    # writing results.yaml after it has printed a passing verdict (exit status 2).
    verdict = _VERDICT.search(output)
    return Outcome(returncode, output, passed, failures, verdict["verdict"] if verdict else None)


# Hosted repositories the suite pushes to, and the access rules that let it (a config
# fragment merged into a mirror's).
HOSTED_CONFIG: dict[str, Any] = {
    "storage": {"delete": {"enabled": True}},
    "mirror": {
        "hosted": {"repositories": ["conformance"]},
        "access": [
            {"repositories": ["**"]},
            {"repositories": ["conformance/**"], "actions": ["pull", "push", "delete"]},
        ],
    },
}


def check_all_workflows(registry_host: str, workdir: Path, what: str) -> Outcome:
    """The whole suite (pull, push, content discovery, content management; referrers and
    sha512 content included) against the hosted repositories of ``HOSTED_CONFIG``;
    fails the calling test on any failing leaf. ``what``: the run's name in the output."""
    outcome = run(
        registry_host,
        workdir,
        settings={
            "OCI_REPO1": "conformance/repo1",
            "OCI_REPO2": "conformance/repo2",
            "OCI_API_BLOBS_UPLOAD_CANCEL": "true",
        },
    )
    print(f"conformance, all workflows, {what}: {outcome.summary}")
    assert outcome.failures == [], "\n".join(outcome.failures)
    assert outcome.verdict == "Pass" and outcome.passed > 800, outcome.output[-4000:]
    assert "Blob upload cancel............:       Pass" in outcome.output
    return outcome
