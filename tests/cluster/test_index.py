"""The Redis index answers like the SQLite one, and degrades instead of failing when Redis
is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pullthrough.cluster.connection import Coordination
from pullthrough.cluster.index import RedisIndex
from pullthrough.config.model import ClusterConfig
from pullthrough.store.index import Index, IndexBackend
from tests.cluster.redis_server import RedisServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
A, B, C, M = (f"sha256:{c * 64}" for c in "abcd")


async def _story(index: IndexBackend) -> list[Any]:
    """The same calls on either index; what each answered, times left out."""
    seen: list[Any] = []
    await index.record(A, 100, media_type=None, upstream="docker.io", repo="library/x")
    await index.record(B, 200, media_type=None, upstream="docker.io", repo="library/x")
    await index.record(
        M, 50, media_type=MANIFEST, upstream="docker.io", repo="library/x", children=[A, B]
    )
    await index.link("ghcr.io", "org/y", A)
    await index.set_tag("docker.io", "library/x", "v1", media_type=MANIFEST, digest=M)
    await index.set_tag("docker.io", "library/x", "v2", media_type=MANIFEST, digest=M)
    seen.append(
        [
            await index.is_linked("docker.io", "library/x", B),
            await index.is_linked("ghcr.io", "org/y", A),
            await index.is_linked("ghcr.io", "org/y", B),
        ]
    )
    seen.append([await index.blob(M), await index.blob(C)])
    seen.append([(t.media_type, t.digest) for t in await index.tag("docker.io", "library/x", "v1")])
    seen.append(await index.tags("docker.io", "library/x"))
    seen.append([await index.repositories("docker.io"), await index.repositories("ghcr.io")])
    seen.append(await index.usage())
    index.touch(A)  # A becomes the most recently used
    await index.flush_access()
    lru = await index.least_recent(10, accessed_before=float("inf"))
    seen.append([(b.digest, b.size, b.upstreams, b.is_manifest) for b in lru])
    some = await index.objects([M, A, C])  # C is not stored
    seen.append(sorted((b.digest, b.size, b.upstreams, b.is_manifest) for b in some.values()))
    assert {d: b.last_access for d, b in some.items()} == {
        b.digest: b.last_access for b in lru if b.digest in (M, A)
    }
    seen.append(sorted(await index.usage_by_repository()))
    seen.append(sorted((name, sorted(d)) for name, d in (await index.repository_links()).items()))
    seen.append([row[:5] for row in await index.catalog_rows()])
    await index.forget(M)  # its tags and links go with it
    await index.adopt(C, 300, 1.0)
    seen.append(await index.tags("docker.io", "library/x"))
    seen.append(await index.tag("docker.io", "library/x", "v1"))
    seen.append(await index.is_linked("docker.io", "library/x", M))
    seen.append(await index.usage())
    seen.append(sorted(await index.digests()))
    seen.append([b.digest for b in await index.least_recent(1, accessed_before=10.0)])
    await index.drop_tag("docker.io", "library/x", "v2")
    seen.append(await index.tags("docker.io", "library/x"))
    # Operator switches: pins and the offline switch.
    await index.pin("docker.io", "library/x", "3.*")
    await index.pin("docker.io", "library/x", "3.*")  # once is enough
    await index.pin("ghcr.io", "org/y", "v1")
    seen.append(await index.pins())
    seen.append([await index.unpin("ghcr.io", "org/y", "v1"),
                 await index.unpin("ghcr.io", "org/y", "v1")])
    seen.append(await index.pins())
    await index.switch_offline("ghcr.io", True)
    await index.switch_offline("docker.io", True)
    await index.switch_offline("docker.io", False)
    seen.append(await index.offline_switches())
    # Pull counts: by tag and by digest, noted, read before and after a flush alike.
    for tag in ("v1", "v1", None, "v2"):
        index.pulled("docker.io", "library/x", tag)
    index.pulled("ghcr.io", "org/y", "v1")
    wanted = [("docker.io", "library/x"), ("docker.io", "library/none")]
    before = await index.pulls(wanted)
    await index.flush_access()
    index.pulled("docker.io", "library/x", "v1")
    after = await index.pulls(wanted)
    seen.append([{name: {t: p.count for t, p in tags.items()} for name, tags in pulls.items()}
                 for pulls in (before, after)])
    assert all(p.last > 0 for p in after[("docker.io", "library/x")].values())
    return seen


def _redis_index(server: RedisServer) -> tuple[Coordination, RedisIndex]:
    config = ClusterConfig(redis_host="127.0.0.1", redis_port=server.port, advertise="http://t")
    coordination = Coordination(config)
    return coordination, RedisIndex(coordination)


async def test_redis_index_answers_like_the_sqlite_index(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sqlite = Index(tmp_path / "index.db")
    await sqlite.open()
    coordination, shared = _redis_index(redis_server)
    await shared.open()
    try:
        assert await _story(shared) == await _story(sqlite)
    finally:
        await sqlite.close()
        await shared.close()
        await coordination.close()


async def test_redis_index_answers_from_memory_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    coordination, index = _redis_index(redis_server)
    try:
        await index.record(A, 100, media_type=None, upstream="docker.io", repo="library/x")
        await index.set_tag("docker.io", "library/x", "v1", media_type=MANIFEST, digest=A)
        assert await index.usage() == (1, 100)
        redis_server.stop()
        # Nothing raises. What this replica wrote or read is remembered (so it can still
        # serve its cache with the upstream down too); anything else is not trusted.
        assert await index.is_linked("docker.io", "library/x", A) is True
        assert await index.is_linked("ghcr.io", "org/y", A) is False
        assert [t.digest for t in await index.tag("docker.io", "library/x", "v1")] == [A]
        assert await index.tag("docker.io", "library/x", "v2") == []
        await index.record(B, 5, media_type=None, upstream="docker.io", repo="library/x")
        assert await index.usage() == (1, 100)  # the last figures read
        index.touch(A)
        await index.flush_access()  # kept for later
        assert "cluster coordination suspended" in caplog.text
        redis_server.start()
        coordination._rest_until = 0.0  # do not wait out the rest after the failure
        assert await index.is_linked("docker.io", "library/x", A) is False  # redis came back empty
        assert "cluster coordination resumed" in caplog.text
    finally:
        await coordination.close()
