"""Docker Engine (Debian's docker.io) pulls Docker Hub names through the mirror
(``registry-mirrors``), and a fresh daemon gets them from the mirror's cache while the
upstream is down. dockerd falls back to Docker Hub silently when a mirror fails, so every
test also checks the mirror's access log and that nothing tried to go around it."""

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
from tests.support.clients import AccessLogCursor, DockerDaemon, HubGuard
from tests.support.images import ImageSet, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

UA = USER_AGENT["docker"]


def test_docker_pulls_through_mirror_and_then_from_its_cache(
    images: ImageSet,
    team_app: PushedImage,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
) -> None:
    wanted = [*images.all(), team_app]
    cursor = AccessLogCursor(mirror)

    docker = docker_factory()
    for image in wanted:
        # dockerd reports the digest it resolved the tag to: an index's own for library/multi.
        assert docker.pull(image.ref).digest == image.digest, image.ref
    first = check_served(cursor, wanted, user_agent=UA)
    print("docker, first pulls:", describe(first))
    for image in wanted:
        assert upstream_proxy.count(path_contains=f"/v2/{image.repo}/manifests/") >= 1
    docker.stop()

    upstream_proxy.stop()
    try:
        assert_upstream_down(upstream_proxy)
        cursor.reset()
        fresh = docker_factory()  # new data root: every blob must come from the mirror again
        for image in wanted:
            assert fresh.pull(image.ref).digest == image.digest, image.ref
        cached = check_served(cursor, wanted, user_agent=UA)
        print("docker, upstream down:", describe(cached))
    finally:
        upstream_proxy.start()
    assert_no_fallback(hub_guard)


def test_docker_short_name_is_the_library_repository(
    images: ImageSet,
    mirror: MirrorProcess,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
) -> None:
    cursor = AccessLogCursor(mirror)
    docker = docker_factory()
    assert docker.pull("oci-small:v1").digest == images.oci_small.digest
    assert docker.pull("docker.io/library/oci-small:v1").digest == images.oci_small.digest
    entries = check_served(cursor, [images.oci_small], user_agent=UA)
    assert all("/v2/oci-small/" not in e.path for e in entries)
    assert_no_fallback(hub_guard)


def test_docker_falls_back_to_docker_hub_when_the_mirror_lacks_an_image(
    mirror: MirrorProcess,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
) -> None:
    """The guard works: a name the upstream does not have gets 404 from the mirror, and
    dockerd then tries Docker Hub itself, which the guard refuses and records."""
    cursor = AccessLogCursor(mirror)
    docker = docker_factory()
    proc = docker.docker(["pull", "library/not-there:v1"], check=False)
    assert proc.returncode != 0
    entries = cursor.wait_for(lambda es: any("/not-there/" in e.path for e in es))
    assert {e.status for e in entries if "/not-there/manifests/" in e.path} == {404}
    assert any("registry-1.docker.io" in a for a in hub_guard.attempts), hub_guard.attempts
