"""Redis with a password (``requirepass``): a replica given the right one (here through
``REGISTRY_MIRROR_CLUSTER_REDIS_PASSWORD``, as deploy/ passes it) coordinates through it;
one given a wrong one, or none, does not start, and says which key to fix without
repeating the password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster.pulling import get_blob
from tests.cluster.redis_server import RedisServer, available
from tests.support.images import ImageFactory
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

PASSWORD = "s3cret-for-the-test-only"
WRONG = "not-the-redis-password"
ENV = "REGISTRY_MIRROR_CLUSTER_REDIS_PASSWORD"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not available():
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    yield server
    server.stop()


def _replica(tmp_path: Path, name: str, remoteurl: str, server: RedisServer) -> MirrorProcess:
    doc: dict[str, Any] = {
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "shared")}},
        "mirror": {"cluster": {"redis": {"addr": server.addr}}},
    }
    return MirrorProcess(tmp_path / name, remoteurl, config=doc)


def test_a_replica_with_the_password_coordinates_and_a_wrong_one_does_not_start(
    tmp_path: Path,
    locked_redis: RedisServer,
    upstream_proxy: RecordingProxy,
    image_factory: ImageFactory,
) -> None:
    image = image_factory("library/locked")
    layer = image.source.layer_digests[0]
    size = image.source.blob_file(layer).stat().st_size
    started: list[MirrorProcess] = []
    try:
        right = _replica(tmp_path, "right", upstream_proxy.url, locked_redis)
        right.env = {ENV: PASSWORD}
        started.append(right.start())
        assert get_blob(right.host, image.repo, layer) == (200, layer, size)
        assert layer in right.stored_files()  # stored and indexed just after the last byte
        db = redis.Redis(host="127.0.0.1", port=locked_redis.port, password=PASSWORD)
        assert db.exists(f"pullthrough:blob|{layer}")  # indexed in the shared index
        assert "coordination suspended" not in right.log_text()

        for name, env in (("wrong", {ENV: WRONG}), ("none", {})):
            replica = _replica(tmp_path, name, upstream_proxy.url, locked_redis)
            replica.env = env
            started.append(replica)
            with pytest.raises(RuntimeError):
                replica.start(timeout=10)
            log = replica.log_text()
            assert "config error: mirror.cluster.redis.password" in log, log
            assert WRONG not in log and PASSWORD not in log
            assert "Traceback" not in log
    finally:
        for replica in started:
            replica.stop()
