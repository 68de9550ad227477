"""buildah (Debian's 1.28) pulls docker.io names through the mirror named in a
registries.conf ``[[registry.mirror]]``, and a fresh store gets them from the mirror's
cache while the upstream is down."""

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
from tests.support.clients import AccessLogCursor, Buildah, HubGuard
from tests.support.images import ImageSet, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

UA = USER_AGENT["buildah"]


def _pull_all(factory: Callable[..., Buildah], wanted: list[PushedImage]) -> None:
    for image in wanted:
        buildah = factory()  # one store per image, as for podman
        ref = f"docker.io/{image.ref}"
        # `buildah images` lists the digest the tag resolved to (the index's for multi);
        # the image's FromImageDigest is the platform manifest it was built from.
        assert buildah.pull(ref).digest == image.digest, image.ref
        from_digest = buildah.cmd(
            ["inspect", "--type", "image", "--format", "{{.FromImageDigest}}", ref]
        ).stdout.strip()
        assert from_digest == platform_manifest(image), image.ref


def test_buildah_pulls_through_mirror_and_then_from_its_cache(
    images: ImageSet,
    team_app: PushedImage,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    buildah_factory: Callable[..., Buildah],
    hub_guard: HubGuard,
) -> None:
    wanted = [*images.all(), team_app]
    cursor = AccessLogCursor(mirror)

    _pull_all(buildah_factory, wanted)
    first = check_served(cursor, wanted, user_agent=UA)
    print("buildah, first pulls:", describe(first))

    upstream_proxy.stop()
    try:
        assert_upstream_down(upstream_proxy)
        cursor.reset()
        _pull_all(buildah_factory, wanted)
        cached = check_served(cursor, wanted, user_agent=UA)
        print("buildah, upstream down:", describe(cached))
    finally:
        upstream_proxy.start()
    assert_no_fallback(hub_guard)


def test_buildah_falls_back_to_docker_hub_when_the_mirror_lacks_an_image(
    mirror: MirrorProcess,
    buildah_factory: Callable[..., Buildah],
    hub_guard: HubGuard,
) -> None:
    """The guard works: after the mirror's 404 buildah tries registry-1.docker.io."""
    cursor = AccessLogCursor(mirror)
    proc = buildah_factory().cmd(
        ["pull", "--retry", "0", "docker.io/library/not-there:v1"], check=False
    )
    assert proc.returncode != 0
    entries = cursor.wait_for(lambda es: any("/not-there/" in e.path for e in es))
    assert {e.status for e in entries if "/not-there/manifests/" in e.path} == {404}
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
