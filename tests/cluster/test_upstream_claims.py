"""Two upstreams serving the same blob digest to a cluster: a client of one never gets the
bytes of the other's download (in flight or stored) before its own upstream served them;
downloads are claimed per (upstream, digest) across replicas."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from tests.cluster.conftest import ReplicaFactory
from tests.cluster.pulling import get_blob
from tests.support import MiB
from tests.support.images import ImageFactory, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import wait_until
from tests.support.proxy import ProxyFactory, RecordingProxy, exchanges_summary
from tests.support.registry import RegistryFactory

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]

SEED = "same-bytes-on-two-registries"


@dataclass
class TwoUpstreams:
    group: list[MirrorProcess]
    hub: RecordingProxy  # U: docker.io, the default upstream
    ghcr: RecordingProxy  # V: ghcr.io
    on_hub: PushedImage
    on_ghcr: PushedImage
    layer: str
    size: int


@pytest.fixture
def two(
    image_factory: ImageFactory,
    registry_factory: RegistryFactory,
    proxy_factory: ProxyFactory,
    replicas: ReplicaFactory,
    upstream_proxy: RecordingProxy,
) -> TwoUpstreams:
    second = registry_factory()
    ghcr = proxy_factory(second.url)
    # The same seed: both registries hold a layer with the same digest (same bytes).
    on_hub = image_factory("library/shared", layers=(6 * MiB,), seed=SEED)
    on_ghcr = image_factory("org/shared", layers=(6 * MiB,), seed=SEED, registry=second)
    layer = on_hub.source.layer_digests[0]
    assert layer in on_ghcr.blob_digests
    group = replicas(
        upstream_proxy.url,
        n=2,
        config={"mirror": {"upstreams": [{"name": "ghcr.io", "remoteurl": ghcr.url}]}},
    )
    upstream_proxy.reset()
    ghcr.reset()
    size = on_hub.source.blob_file(layer).stat().st_size
    return TwoUpstreams(group, upstream_proxy, ghcr, on_hub, on_ghcr, layer, size)


def test_a_client_of_one_upstream_never_follows_another_upstreams_download(
    two: TwoUpstreams,
) -> None:
    a, b = two.group
    two.ghcr.blob_rate = 1 * MiB  # V's download takes ~6 s: B's client arrives meanwhile
    from_ghcr: list[tuple[int, str, int]] = []
    thread = threading.Thread(
        target=lambda: from_ghcr.append(
            get_blob(a.host, f"ghcr.io/{two.on_ghcr.repo}", two.layer, timeout=60)
        )
    )
    thread.start()
    try:
        # (The proxy records an exchange when it ends: the temp file shows it under way.)
        wait_until(lambda: _downloading(a, two.layer), timeout=20, message="V's download")
        # A is downloading the digest from V. B's client of U gets it from U itself, at
        # U's speed, instead of following A's download (or being told it may).
        assert get_blob(b.host, two.on_hub.repo, two.layer, timeout=30) == (
            200,
            two.layer,
            two.size,
        )
        assert thread.is_alive(), "V's download ended first"
    finally:
        thread.join(60)
    assert from_ghcr == [(200, two.layer, two.size)]
    hub_gets = two.hub.requests("GET", f"/blobs/{two.layer}")
    assert len(hub_gets) == 1, exchanges_summary(two.hub.requests())
    assert hub_gets[0].bytes_sent == two.size  # all of it, not a Range for the rest
    assert len(two.ghcr.requests("GET", f"/blobs/{two.layer}")) == 1
    assert "following the fetch of" not in b.log_text()


def test_a_blob_another_upstream_stored_is_downloaded_again_from_this_one(
    two: TwoUpstreams,
) -> None:
    a, b = two.group
    assert get_blob(a.host, f"ghcr.io/{two.on_ghcr.repo}", two.layer) == (
        200,
        two.layer,
        two.size,
    )
    # Stored by V's download. U never served it: B's client of U gets it from U, not from
    # the file V's download left in the shared store.
    assert get_blob(b.host, two.on_hub.repo, two.layer) == (200, two.layer, two.size)
    assert two.hub.count("GET", f"/blobs/{two.layer}") == 1, exchanges_summary(two.hub.requests())
    # Now U served it too: its clients read the stored file, on either replica.
    assert get_blob(a.host, two.on_hub.repo, two.layer) == (200, two.layer, two.size)
    assert two.hub.count("GET", f"/blobs/{two.layer}") == 1


def _downloading(replica: MirrorProcess, digest: str) -> bool:
    """Whether a temp file of ``digest`` in the shared store has bytes in it."""
    prefix = digest.replace(":", "-") + "."
    files = (replica.root / "tmp").glob(prefix + "*")
    return any(f.stat().st_size > 0 for f in files)
