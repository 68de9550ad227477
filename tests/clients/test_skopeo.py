"""skopeo in mirror mode (``--registries-conf`` with a ``[[registry.mirror]]``) copies
docker.io names through the mirror, single-platform and ``--all``, and again from the
mirror's cache while the upstream is down."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.clients.scenario import (
    USER_AGENT,
    assert_no_fallback,
    assert_upstream_down,
    check_served,
    describe,
    platform_manifest,
)
from tests.support.clients import AccessLogCursor, HubGuard, Skopeo
from tests.support.images import ImageSet, PushedImage, blob_digests_in_dir
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

UA = USER_AGENT["skopeo"]


def _copy_all(skopeo: Skopeo, wanted: list[PushedImage]) -> None:
    for image in wanted:
        ref = f"docker.io/{image.ref}"
        # Without --all skopeo copies (and reports) the host platform's manifest.
        single = skopeo.pull(ref)
        assert single.digest == platform_manifest(image), image.ref
        if image.is_index:
            every = skopeo.pull(ref, all_platforms=True)
            assert every.digest == image.digest
    for copy in skopeo.workdir.glob("copy-*/"):
        blob_digests_in_dir(copy)  # every file matches its digest


def test_skopeo_copies_through_mirror_and_then_from_its_cache(
    images: ImageSet,
    team_app: PushedImage,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    skopeo_factory: Callable[..., Skopeo],
    hub_guard: HubGuard,
) -> None:
    wanted = [*images.all(), team_app]
    every_blob = set().union(*(im.blob_digests for im in wanted))  # --all: arm64's too
    cursor = AccessLogCursor(mirror)

    _copy_all(skopeo_factory(), wanted)
    first = check_served(cursor, wanted, user_agent=UA, blobs=every_blob)
    print("skopeo, first copies:", describe(first))

    upstream_proxy.stop()
    try:
        assert_upstream_down(upstream_proxy)
        cursor.reset()
        _copy_all(skopeo_factory(), wanted)
        cached = check_served(cursor, wanted, user_agent=UA, blobs=every_blob)
        print("skopeo, upstream down:", describe(cached))
    finally:
        upstream_proxy.start()
    assert_no_fallback(hub_guard)


def test_skopeo_inspect_lists_tags_at_the_registry_not_the_mirror(
    images: ImageSet,
    mirror: MirrorProcess,
    skopeo_factory: Callable[..., Skopeo],
    hub_guard: HubGuard,
) -> None:
    """``skopeo inspect`` reads the manifest through the mirror, but its tag list goes to
    the registry itself (mirrors are for pulls only): with ``--no-tags`` it works offline;
    without, it tries registry-1.docker.io."""
    skopeo = skopeo_factory()
    ref = f"docker://docker.io/{images.oci_small.ref}"
    out = skopeo.cmd(["inspect", "--retry-times", "0", "--no-tags", ref]).stdout
    assert images.oci_small.digest in out
    assert_no_fallback(hub_guard)
    proc = skopeo.cmd(["inspect", "--retry-times", "0", ref], check=False)
    assert proc.returncode != 0
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
