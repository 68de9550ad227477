"""containerd (Debian's containerd 1.6, driven with ``ctr``) pulls docker.io names through
the mirror named in a ``hosts.toml`` (``--hosts-dir``), sending ``?ns=docker.io`` on every
registry request, unpacks them with the overlayfs snapshotter, and a fresh containerd gets
them from the mirror's cache while the upstream is down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.scenario import (
    USER_AGENT,
    assert_no_fallback,
    assert_upstream_down,
    check_served,
    describe,
    served_blobs,
)
from tests.support.clients import AccessLogCursor, Containerd, HubGuard
from tests.support.images import ImageSet, Index, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

UA = USER_AGENT["containerd"]


def _ref(image: PushedImage) -> str:
    return f"docker.io/{image.repo}:{image.tag}"


def _pull_all(
    ctrd: Containerd, wanted: list[PushedImage], hosts_dir: Path, hub_guard: HubGuard
) -> None:
    for image in wanted:
        result = ctrd.pull(_ref(image), hosts_dir=hosts_dir, env=hub_guard.env())
        # ctr records the tag's target: an index's own digest for library/multi.
        assert result.digest == image.digest, image.ref
        assert f"unpacking linux/amd64 {image.digest}" in result.output, result.output


def test_containerd_pulls_through_mirror_and_then_from_its_cache(
    images: ImageSet,
    team_app: PushedImage,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    containerd_factory: Callable[..., Containerd],
    hosts_dir: Path,
    hub_guard: HubGuard,
) -> None:
    wanted = [*images.all(), team_app]
    cursor = AccessLogCursor(mirror)

    ctrd = containerd_factory()
    _pull_all(ctrd, wanted, hosts_dir, hub_guard)
    first = check_served(cursor, wanted, user_agent=UA)
    print(f"containerd ({ctrd.snapshotter} snapshotter), first pulls:", describe(first))
    registry_requests = [e for e in first if e.path != "/v2/"]
    assert registry_requests
    assert all(e.query == "ns=docker.io" for e in registry_requests), describe(first)
    assert ctrd.snapshot_count() >= 3  # unpacked: oci-small's two layers + multi + team/app
    ctrd.stop()

    upstream_proxy.stop()
    try:
        assert_upstream_down(upstream_proxy)
        cursor.reset()
        fresh = containerd_factory()  # new content store and snapshots
        _pull_all(fresh, wanted, hosts_dir, hub_guard)
        cached = check_served(cursor, wanted, user_agent=UA)
        print("containerd, upstream down:", describe(cached))
    finally:
        upstream_proxy.start()
    assert_no_fallback(hub_guard)


def test_containerd_pulls_the_other_platform_of_an_index(
    images: ImageSet,
    mirror: MirrorProcess,
    containerd_factory: Callable[..., Containerd],
    hosts_dir: Path,
    hub_guard: HubGuard,
) -> None:
    """``--platform linux/arm64`` on an amd64 host: the index's other child and its blobs
    come through the mirror too (and unpack: they are plain files)."""
    assert isinstance(images.multi.source, Index)
    arm64 = images.multi.source.image_for("arm64")
    cursor = AccessLogCursor(mirror)
    ctrd = containerd_factory()
    result = ctrd.pull(
        _ref(images.multi), hosts_dir=hosts_dir, env=hub_guard.env(), platform="linux/arm64"
    )
    assert result.digest == images.multi.digest
    assert f"unpacking linux/arm64 {images.multi.digest}" in result.output, result.output
    entries = cursor.wait_for(lambda es: arm64.blob_digests <= served_blobs(es))
    child = f"/v2/{images.multi.repo}/manifests/{arm64.manifest_digest}"
    assert any(e.path == child and e.status == 200 for e in entries)
    assert_no_fallback(hub_guard)


def test_containerd_falls_back_to_the_registry_when_the_mirror_lacks_an_image(
    mirror: MirrorProcess,
    containerd_factory: Callable[..., Containerd],
    hosts_dir: Path,
    hub_guard: HubGuard,
) -> None:
    """The guard works: after the mirror's 404, ctr tries ``server`` (Docker Hub)."""
    cursor = AccessLogCursor(mirror)
    ctrd = containerd_factory()
    proc = ctrd.ctr(
        ["images", "pull", "--hosts-dir", str(hosts_dir), "docker.io/library/not-there:v1"],
        env=hub_guard.env(),
        check=False,
    )
    assert proc.returncode != 0
    entries = cursor.wait_for(lambda es: any("/not-there/" in e.path for e in es))
    assert {e.status for e in entries if "/not-there/manifests/" in e.path} == {404}
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
