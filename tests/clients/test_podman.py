"""podman (Debian's 4.3) pulls docker.io names through the mirror named in a
registries.conf ``[[registry.mirror]]``, and a fresh store gets them from the mirror's
cache while the upstream is down. podman, like dockerd, falls back to the registry itself
when every mirror fails, so the tests also check the mirror's access log and the guard."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.clients.scenario import (
    USER_AGENT,
    assert_no_fallback,
    assert_upstream_down,
    check_served,
    describe,
)
from tests.support.clients import AccessLogCursor, HubGuard, Podman
from tests.support.images import ImageSet, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

UA = USER_AGENT["podman"]


def _pull_all(factory: Callable[..., Podman], wanted: list[PushedImage]) -> None:
    for image in wanted:
        # One store per image: podman merges tags sharing a config (oci-small, schema2).
        podman = factory()
        result = podman.pull(f"docker.io/{image.ref}")
        # podman's .Digest is the digest the tag resolved to: the index's for library/multi.
        assert result.digest == image.digest, image.ref


def test_podman_pulls_through_mirror_and_then_from_its_cache(
    images: ImageSet,
    team_app: PushedImage,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    podman_factory: Callable[..., Podman],
    hub_guard: HubGuard,
) -> None:
    wanted = [*images.all(), team_app]
    cursor = AccessLogCursor(mirror)

    _pull_all(podman_factory, wanted)
    first = check_served(cursor, wanted, user_agent=UA)
    print("podman, first pulls:", describe(first))

    upstream_proxy.stop()
    try:
        assert_upstream_down(upstream_proxy)
        cursor.reset()
        _pull_all(podman_factory, wanted)
        cached = check_served(cursor, wanted, user_agent=UA)
        print("podman, upstream down:", describe(cached))
    finally:
        upstream_proxy.start()
    assert_no_fallback(hub_guard)


def test_podman_mirror_with_path_prefix_sends_the_prefix(
    images: ImageSet,
    mirror: MirrorProcess,
    podman_factory: Callable[..., Podman],
    hub_guard: HubGuard,
) -> None:
    """``location = "<mirror>/docker.io"``: podman puts the prefix into the request path
    (``/v2/docker.io/library/...``), the form a mirror of several upstreams routes on. If
    the pull succeeds, it must be the right image and must not have gone around the
    mirror; a mirror that takes the prefix for part of the repository name answers 404."""
    cursor = AccessLogCursor(mirror)
    podman = podman_factory(mirrors=[f"{mirror.host}/docker.io"])
    proc = podman.cmd(["pull", f"docker.io/{images.oci_small.ref}"], check=False, timeout=60)
    entries = cursor.wait_for(lambda es: any("/manifests/" in e.path for e in es))
    print("podman, path-prefixed mirror:", [str(e) for e in entries])
    assert any(
        e.path == f"/v2/docker.io/{images.oci_small.repo}/manifests/{images.oci_small.tag}"
        for e in entries
    ), [str(e) for e in entries]
    if proc.returncode == 0:  # the mirror learned to route docker.io/ prefixes
        assert podman.image_digest(f"docker.io/{images.oci_small.ref}") == images.oci_small.digest
        assert_no_fallback(hub_guard)


def test_podman_falls_back_to_docker_hub_when_the_mirror_lacks_an_image(
    mirror: MirrorProcess,
    podman_factory: Callable[..., Podman],
    hub_guard: HubGuard,
) -> None:
    """The guard works: after the mirror's 404 podman tries registry-1.docker.io."""
    cursor = AccessLogCursor(mirror)
    proc = podman_factory().cmd(["pull", "docker.io/library/not-there:v1"], check=False)
    assert proc.returncode != 0
    entries = cursor.wait_for(lambda es: any("/not-there/" in e.path for e in es))
    assert {e.status for e in entries if "/not-there/manifests/" in e.path} == {404}
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
