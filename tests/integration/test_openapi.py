"""The OpenAPI description in the repository matches the live mirror: schemathesis
generates requests from it (bounded) and checks there is no 5xx but 502/503 from the
upstream, every status is documented, and every body matches its schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env

pytestmark = pytest.mark.integration

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    images, mirror: MirrorProcess
) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if schemathesis is None:
        pytest.skip("schemathesis is not installed in this environment")
    result = subprocess.run(
        [
            schemathesis,
            "run",
            str(SPEC),
            "--url",
            mirror.url,
            "--checks",
            "not_a_server_error,response_schema_conformance,"
            "status_code_conformance,content_type_conformance",
            "--max-examples",
            "40",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
