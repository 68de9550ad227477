"""Fixtures for S3 tests: a real S3 server (Ceph's radosgw on a private one-OSD cluster,
tests/support/s3_server.py) on a loopback port, with one user and one bucket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3_server import APT_PACKAGES, CephS3, available


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "s3: talks to a real S3 server (radosgw) the test run starts on loopback"
    )


def _require_ceph() -> None:
    if not available():
        pytest.skip(f"radosgw not installed (apt-get install {' '.join(APT_PACKAGES)})")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephS3]:
    """One S3 server for the session (starts in about 2 s). Tests write under keys of their
    own; they may ``stop()``/``start()`` it but must leave it running."""
    _require_ceph()
    with CephS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def own_s3_server(tmp_path: Path) -> Iterator[CephS3]:
    """An S3 server of this test's own, for tests that crash it or leave it stopped."""
    _require_ceph()
    with CephS3(tmp_path / "s3") as server:
        yield server
