"""One mirror, two upstreams: besides Docker Hub names, containerd, podman, buildah and
skopeo pull ``ghcr.io/org/app:v1`` through the same mirror, whose second upstream (named
``ghcr.io``) is another registry behind its own recording proxy. Docker is not here:
``registry-mirrors`` only ever applies to Docker Hub names.

* containerd (``ctr --hosts-dir``): ``ghcr.io/hosts.toml`` naming the mirror, or one
  ``_default/hosts.toml`` for every registry; it sends ``?ns=ghcr.io`` on each request.
* podman, buildah, skopeo: one registries.conf with a ``ghcr.io`` registry whose mirror is
  ``<mirror host>/ghcr.io`` (path-prefixed: requests go to ``/v2/ghcr.io/org/app/...``).

Every client pulls once through the mirror and once more from a fresh store with the
second upstream's proxy stopped; the HubGuard catches a fallback to ghcr.io as well as to
Docker Hub (the last test shows it does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.scenario import (
    USER_AGENT,
    Route,
    SecondUpstream,
    assert_no_fallback,
    assert_routed,
    check_served,
    describe,
    pull_second_upstream_then_from_cache,
)
from tests.integration.conftest import MirrorFactory
from tests.support.clients import (
    AccessLogCursor,
    Containerd,
    HubGuard,
    PullResult,
    containerd_hosts_dir,
    registries_conf,
)
from tests.support.images import PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

CLIENTS = ["containerd", "containerd-default", "podman", "buildah", "skopeo"]


@pytest.fixture
def mirror(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, ghcr: SecondUpstream
) -> MirrorProcess:
    """Overrides the conftest's: docker.io is the session registry (``upstream_proxy``),
    ghcr.io the ``ghcr`` one. Every client factory in this module gets this mirror."""
    return mirror_factory(upstream_proxy.url, config=ghcr.mirror_config())


@dataclass(frozen=True)
class Client:
    """One client kind, configured for both upstreams of the mirror."""

    label: str
    user_agent: str
    pull: Callable[[str], PullResult]
    """Pulls a name into a fresh store (new containerd, podman/buildah store, skopeo dir)."""
    attempt: Callable[[str], int]
    """Tries to pull a name that no upstream has; returns the exit code."""
    ns_routed: bool
    """containerd names the registry in ``?ns=``; the others in a path prefix."""

    def route(self, registry: str) -> Route:
        """How this client's requests for ``registry``'s names reach the mirror."""
        if self.ns_routed:
            return Route(query=f"ns={registry}")
        return Route(prefix="" if registry == "docker.io" else f"{registry}/")


def _containerd(
    request: pytest.FixtureRequest, label: str, hosts: Path, hub_guard: HubGuard
) -> Client:
    factory: Callable[..., Containerd] = request.getfixturevalue("containerd_factory")

    def attempt(ref: str) -> int:
        args = ["images", "pull", "--hosts-dir", str(hosts), ref]
        return factory().ctr(args, env=hub_guard.env(), check=False).returncode

    return Client(
        label,
        USER_AGENT["containerd"],
        lambda ref: factory().pull(ref, hosts_dir=hosts, env=hub_guard.env()),
        attempt,
        ns_routed=True,
    )


def _containers_tool(request: pytest.FixtureRequest, kind: str, conf: Path) -> Client:
    factory = request.getfixturevalue(f"{kind}_factory")

    def attempt(ref: str) -> int:
        tool = factory(registries=conf)
        if kind == "skopeo":
            dest = f"dir:{tool.workdir / 'missing'}"
            args = ["copy", "--retry-times", "0", f"docker://{ref}", dest]
        else:
            args = ["pull", *tool.pull_args(), ref]
        return int(tool.cmd(args, check=False, timeout=60).returncode)

    return Client(
        kind,
        USER_AGENT[kind],
        lambda ref: factory(registries=conf).pull(ref),
        attempt,
        ns_routed=False,
    )


@pytest.fixture
def client(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mirror: MirrorProcess,
    ghcr: SecondUpstream,
    hub_guard: HubGuard,
) -> Client:
    """``request.param`` (one of ``CLIENTS``) set up for both of the mirror's upstreams,
    exactly as the README's snippets show."""
    kind: str = request.param
    if kind.startswith("containerd"):
        hosts = tmp_path / "certs.d"
        registries = ["_default"] if kind == "containerd-default" else ["docker.io", ghcr.name]
        for registry in registries:
            containerd_hosts_dir(hosts, mirror.url, registry=registry)
        return _containerd(request, kind, hosts, hub_guard)
    conf = registries_conf(
        tmp_path / "registries.conf",
        [mirror.host],
        also={ghcr.name: [f"{mirror.host}/{ghcr.name}"]},
    )
    return _containers_tool(request, kind, conf)


@pytest.mark.parametrize("client", CLIENTS, indirect=True)
def test_second_upstream_through_mirror_and_then_from_its_cache(
    client: Client,
    ghcr: SecondUpstream,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    hub_guard: HubGuard,
) -> None:
    pull_second_upstream_then_from_cache(
        client.pull,
        second=ghcr,
        route=client.route(ghcr.name),
        user_agent=client.user_agent,
        mirror=mirror,
        hub=upstream_proxy,
        hub_guard=hub_guard,
        label=client.label,
    )


@pytest.mark.parametrize("client", CLIENTS, indirect=True)
def test_one_config_mirrors_docker_hub_and_the_second_upstream(
    client: Client,
    ghcr: SecondUpstream,
    team_app: PushedImage,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    hub_guard: HubGuard,
) -> None:
    """The same configuration (for containerd also the single ``_default/hosts.toml``)
    sends a docker.io name to the docker.io upstream and a ghcr.io name to the second."""
    cursor = AccessLogCursor(mirror)
    pulls = [("docker.io", team_app, upstream_proxy), (ghcr.name, ghcr.app, ghcr.proxy)]
    for registry, image, _ in pulls:
        assert client.pull(f"{registry}/{image.ref}").digest == image.digest, registry
    for registry, image, proxy in pulls:
        route = client.route(registry)
        entries = check_served(cursor, [image], user_agent=client.user_agent, route=route)
        assert_routed(entries, image, route)
        assert proxy.count(path_contains=f"/v2/{image.repo}/manifests/") >= 1, registry
    print(f"{client.label}, both registries:", describe(cursor.entries()))
    assert upstream_proxy.requests(path_contains=ghcr.app.repo) == []
    assert ghcr.proxy.requests(path_contains=team_app.repo) == []
    assert_no_fallback(hub_guard)


@pytest.mark.parametrize("client", CLIENTS, indirect=True)
def test_guard_catches_a_fallback_to_the_second_registry(
    client: Client, ghcr: SecondUpstream, mirror: MirrorProcess, hub_guard: HubGuard
) -> None:
    """A ghcr.io name the second upstream lacks: the mirror answers 404 (having asked that
    upstream), the client then tries ghcr.io itself, which the guard refuses and records.
    So a silent fallback to ghcr.io in the tests above would have failed them."""
    cursor = AccessLogCursor(mirror)
    assert client.attempt(f"{ghcr.name}/org/not-there:v1") != 0
    entries = cursor.wait_for(lambda es: any("/org/not-there/manifests/" in e.path for e in es))
    route = client.route(ghcr.name)
    manifests = [e for e in entries if "/org/not-there/manifests/" in e.path]
    assert all(e.path.startswith(route.repo_path("org/not-there")) for e in manifests)
    assert {e.status for e in manifests} == {404}, describe(entries)
    assert ghcr.proxy.count(path_contains="/v2/org/not-there/manifests/") >= 1
    assert any(a.startswith(f"CONNECT {ghcr.name}:443 ") for a in hub_guard.attempts), (
        hub_guard.attempts
    )
