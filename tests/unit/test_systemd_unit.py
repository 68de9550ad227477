"""deploy/systemd/pullthrough.service is a unit systemd accepts, hardened as documented."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "pullthrough.service"


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    # verify checks that ExecStart's binary exists: point it at this venv's pullthrough.
    here = Path(sys.executable).parent / "pullthrough"
    assert here.exists(), f"{here}: install the package (pip install -e .)"
    unit = tmp_path / "pullthrough.service"
    unit.write_text(UNIT.read_text().replace("/opt/pullthrough/bin/pullthrough", str(here)))
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # An unknown or misspelt key is only a warning (exit 0): any output fails too.
    assert proc.returncode == 0 and not proc.stdout and not proc.stderr, proc


def test_the_unit_is_hardened_and_writes_only_its_store() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["ExecStart"].endswith("serve /etc/pullthrough/config.yml")
    assert service["DynamicUser"] == "yes"
    assert service["StateDirectory"] == "pullthrough"
    assert service["ReadWritePaths"] == "/var/lib/pullthrough"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
