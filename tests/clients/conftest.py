"""Fixtures that point real container clients (dockerd, containerd, podman, buildah,
skopeo) at a real ``pullthrough serve`` whose ``docker.io`` upstream is the session's
test registry (``ghcr``: a second registry, for a mirror of two upstreams). Each client
runs privately from a temp dir; see tests/support/clients.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.clients.scenario import SecondUpstream
from tests.integration import conftest as integration
from tests.support import KiB
from tests.support.clients import (
    CURRENT_TEST,
    PULL_TIMES,
    Buildah,
    Containerd,
    DockerDaemon,
    HubGuard,
    Podman,
    Skopeo,
    containerd_hosts_dir,
)
from tests.support.images import ImageFactory, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.proxy import ProxyFactory
from tests.support.registry import RegistryFactory

# The integration tests' mirror fixtures, reused as they are: ``mirror`` is a started
# ``pullthrough serve`` whose upstream (named docker.io) is the session registry seen
# through ``upstream_proxy``.
mirror_factory = integration.mirror_factory
mirror = integration.mirror

ToolT = TypeVar("ToolT", Podman, Buildah)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "clients: drives real dockerd/containerd/podman/buildah/skopeo at the mirror"
    )


@pytest.fixture
def hub_guard() -> Iterator[HubGuard]:
    """The refusing proxy every client is given as HTTP(S)_PROXY: any attempt to reach a
    registry other than the (loopback) mirror is refused and recorded in ``.attempts``."""
    with HubGuard() as guard:
        yield guard


@pytest.fixture
def team_app(image_factory: ImageFactory) -> PushedImage:
    """A fresh non-library Docker Hub name: ``team/app:v1``, two gzip layers."""
    return image_factory("team/app", "v1", layers=(384 * KiB, 96 * KiB), compression="gzip")


@pytest.fixture
def ghcr(
    registry_factory: RegistryFactory, proxy_factory: ProxyFactory, image_factory: ImageFactory
) -> SecondUpstream:
    """A second registry, to be mirrored as ``ghcr.io`` (``ghcr.mirror_config()``), behind its
    own ``RecordingProxy``, holding ``org/app:v1`` (two gzip layers). A test module that
    uses it overrides ``mirror`` so that every client factory gets the two-upstream mirror."""
    registry = registry_factory()
    proxy = proxy_factory(registry.url)
    app = image_factory(
        "org/app", "v1", layers=(192 * KiB, 64 * KiB), compression="gzip", registry=registry
    )
    return SecondUpstream("ghcr.io", registry, proxy, app)


@pytest.fixture
def docker_factory(
    tmp_path: Path, mirror: MirrorProcess, hub_guard: HubGuard
) -> Iterator[Callable[..., DockerDaemon]]:
    """``docker_factory(**DockerDaemon_kwargs) -> started DockerDaemon`` with a fresh data
    root and ``registry-mirrors: [mirror.url]``; stopped (by PID) at teardown."""
    made: list[DockerDaemon] = []
    ids = count()

    def factory(**kwargs: Any) -> DockerDaemon:
        kwargs.setdefault("mirrors", [mirror.url])
        kwargs.setdefault("insecure", [mirror.host])
        daemon = DockerDaemon(tmp_path / f"docker-{next(ids)}", env=hub_guard.env(), **kwargs)
        made.append(daemon)
        return daemon.start()

    yield factory
    for daemon in reversed(made):
        daemon.stop()
        print(f"--- {daemon.log_path} (tail)\n{daemon.log_tail(30)}")


@pytest.fixture
def containerd_factory(tmp_path: Path, hub_guard: HubGuard) -> Iterator[Callable[..., Containerd]]:
    """``containerd_factory(**Containerd_kwargs) -> started Containerd`` with a fresh root;
    stopped (by PID) at teardown. Pass ``env=hub_guard.env()`` to ``pull()`` as well: the
    ``ctr`` process is the one that talks to registries."""
    made: list[Containerd] = []
    ids = count()

    def factory(**kwargs: Any) -> Containerd:
        kwargs.setdefault("env", hub_guard.env())
        daemon = Containerd(tmp_path / f"containerd-{next(ids)}", **kwargs)
        made.append(daemon)
        return daemon.start()

    yield factory
    for daemon in reversed(made):
        daemon.stop()
        print(f"--- {daemon.log_path} (tail)\n{daemon.log_tail(20)}")


@pytest.fixture
def hosts_dir(tmp_path: Path, mirror: MirrorProcess) -> Path:
    """A containerd ``--hosts-dir`` whose ``docker.io/hosts.toml`` names the mirror."""
    return containerd_hosts_dir(tmp_path / "certs.d", mirror.url)


def _tool_factory(
    kind: type[ToolT], name: str, tmp_path: Path, mirror: MirrorProcess, hub_guard: HubGuard
) -> Iterator[Callable[..., ToolT]]:
    """Fresh stores of a daemonless tool (podman, buildah), the mirror configured; every
    store is closed at teardown."""
    made: list[ToolT] = []
    ids = count()

    def factory(**kwargs: Any) -> ToolT:
        kwargs.setdefault("mirrors", [mirror.host])
        tool = kind(tmp_path / f"{name}-{next(ids)}", env=hub_guard.env(), **kwargs)
        made.append(tool)
        return tool

    yield factory
    for tool in made:
        tool.close()


@pytest.fixture
def podman_factory(
    tmp_path: Path, mirror: MirrorProcess, hub_guard: HubGuard
) -> Iterator[Callable[..., Podman]]:
    """``podman_factory(**Podman_kwargs) -> Podman`` on a fresh store, mirror configured."""
    yield from _tool_factory(Podman, "podman", tmp_path, mirror, hub_guard)


@pytest.fixture
def buildah_factory(
    tmp_path: Path, mirror: MirrorProcess, hub_guard: HubGuard
) -> Iterator[Callable[..., Buildah]]:
    """``buildah_factory(**Buildah_kwargs) -> Buildah`` on a fresh store, mirror configured."""
    yield from _tool_factory(Buildah, "buildah", tmp_path, mirror, hub_guard)


@pytest.fixture
def skopeo_factory(
    tmp_path: Path, mirror: MirrorProcess, hub_guard: HubGuard
) -> Callable[..., Skopeo]:
    """``skopeo_factory(**Skopeo_kwargs) -> Skopeo`` in mirror mode (registries.conf)."""
    ids = count()

    def factory(**kwargs: Any) -> Skopeo:
        kwargs.setdefault("mirrors", [mirror.host])
        return Skopeo(tmp_path / f"skopeo-{next(ids)}", env=hub_guard.env(), **kwargs)

    return factory


@pytest.fixture(autouse=True)
def _name_the_pulls(request: pytest.FixtureRequest) -> Iterator[None]:
    token = CURRENT_TEST.set(request.node.name)
    yield
    CURRENT_TEST.reset(token)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The client x image x (first pull, cached pull) table, with the seconds seen."""
    if not PULL_TIMES:
        return
    rows: dict[tuple[str, str], list[float]] = {}
    for test, ref, seconds in PULL_TIMES:
        rows.setdefault((test, ref), []).append(seconds)
    terminalreporter.write_sep(
        "-", "client pulls (seconds, in order: through the mirror, then cached)"
    )
    for (test, ref), times in rows.items():
        terminalreporter.write_line(
            f"{test[:70]:70} {ref[-45:]:45} " + " ".join(f"{t:6.2f}" for t in times)
        )
