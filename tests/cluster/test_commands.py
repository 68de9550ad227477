"""The operator's commands in cluster mode read the replicas' shared index in Redis (each
replica's SQLite file is never written there), and gc takes its turn under the sweeper lease."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.redis_server import RedisServer
from tests.integration.test_commands import as_json, ok, pullthrough
from tests.support.images import ImageSet, pull_dir
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_ls_du_verify_and_gc_read_the_shared_index(
    replicas, upstream_proxy: RecordingProxy, images: ImageSet, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    first, second = replicas(upstream_proxy.url, n=2)
    pull_dir(images.oci_small.on(first.host), tmp_path / "small")
    stored = first.stored_files()
    wanted = {images.oci_small.digest, *images.oci_small.blob_digests}
    assert wanted <= set(stored)

    # Asked through the other replica's config: what one replica stored, all of them see.
    config = str(second.config_path)
    listed = as_json(pullthrough("ls", config, "--json"))["images"]
    row = next(r for r in listed if (r["repository"], r["tag"]) == ("library/oci-small", "v1"))
    assert row["digest"] == images.oci_small.digest
    assert row["size"] == sum(stored[d].stat().st_size for d in wanted)
    assert (row["objects"], row["missing"]) == (len(wanted), 0)

    report = as_json(pullthrough("du", config, "--json"))
    on_disk = sum(p.stat().st_size for p in stored.values())
    assert report["total"] == {"objects": len(stored), "bytes": on_disk}
    repos = {r["repository"]: r for r in report["repositories"]}
    assert repos["library/oci-small"]["objects"] == len(wanted)

    assert "0 corrupt" in ok(pullthrough("verify", config))
    assert "would remove 0 objects" in ok(pullthrough("gc", config, "--dry-run"))
    # A running replica sweeps under the lease: gc does not sweep beside it.
    refused = pullthrough("gc", config)
    assert refused.returncode == 1
    assert "holds the sweeper lease" in refused.stderr
    # None of it came from (or made) a replica's SQLite file.
    assert not any((r.config_path.parent / "index.db").exists() for r in (first, second))

    redis_server.stop()
    down = pullthrough("ls", config)
    assert down.returncode == 2
    assert "does not answer" in down.stderr and "mirror.cluster.redis" in down.stderr
    assert "Traceback" not in down.stderr
