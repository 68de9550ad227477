"""Fixtures for cluster tests: a real redis-server and pullthrough replicas sharing one
storage root (each with its own port), in front of the session's upstream registry seen
through a RecordingProxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.redis_server import RedisServer, available
from tests.support.mirror import MirrorProcess

ReplicaFactory = Callable[..., list[MirrorProcess]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: several pullthrough replicas coordinating through redis-server"
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not available():
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[ReplicaFactory]:
    """``replicas(remoteurl, n=3, config={...}) -> [MirrorProcess]``: started replicas that
    share ``tmp_path/shared`` and coordinate through ``redis_server``; each has its own
    port, log and (unused in cluster mode) SQLite path. Stopped by PID at teardown."""
    made: list[MirrorProcess] = []

    def factory(
        remoteurl: str, n: int = 3, *, config: dict[str, Any] | None = None
    ) -> list[MirrorProcess]:
        group = []
        for _ in range(n):
            i = len(made)
            doc: dict[str, Any] = {
                "log": {"level": "info"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "shared")}},
                "mirror": {
                    "index_path": str(tmp_path / f"replica-{i}" / "index.db"),
                    "cluster": {"redis": {"addr": redis_server.addr}},
                },
            }
            _merge(doc, config or {})
            replica = MirrorProcess(tmp_path / f"replica-{i}", remoteurl, config=doc)
            made.append(replica)
            group.append(replica.start())
        return group

    yield factory
    for replica in made:
        replica.stop()
        print(f"--- {replica.log_path} (tail)\n{replica.log_tail(30)}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
