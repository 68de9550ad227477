"""Real clients push to a hosted repository of the mirror and pull it back: podman,
buildah and docker (their private stores, tests/support/clients.py). The image they push is one they
pulled through the same mirror from its upstream, so one service is both."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support.clients import Buildah, DockerDaemon, HubGuard, Podman
from tests.support.images import ImageSet
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.clients, pytest.mark.slow]

HOSTED: dict[str, Any] = {
    "mirror": {
        "hosted": {"repositories": ["acme"]},
        "access": [
            {"repositories": ["**"]},
            {"repositories": ["acme/**"], "actions": ["pull", "push"]},
        ],
    }
}


@pytest.fixture
def mirror(mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy) -> MirrorProcess:
    """The clients' mirror, with hosted ``acme/**`` that anyone may push to."""
    return mirror_factory(upstream_proxy.url, config=HOSTED)


@pytest.mark.parametrize("tool", ["podman", "buildah"])
def test_client_pushes_to_a_hosted_repository_and_pulls_it_back(
    images: ImageSet,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    podman_factory: Callable[..., Podman],
    buildah_factory: Callable[..., Buildah],
    hub_guard: HubGuard,
    tool: str,
) -> None:
    factory = podman_factory if tool == "podman" else buildah_factory
    client = factory()
    source = f"docker.io/{images.oci_small.ref}"
    client.pull(source)
    target = f"{mirror.host}/acme/{tool}:v1"
    if tool == "podman":
        client.cmd(["tag", source, target])
        client.cmd(["push", "--tls-verify=false", target])
    else:
        client.cmd(["push", "--tls-verify=false", source, f"docker://{target}"])

    upstream_proxy.reset()
    tags = http_request("GET", f"{mirror.url}/v2/acme/{tool}/tags/list")
    assert json.loads(tags.body)["tags"] == ["v1"]
    fresh = factory()
    pulled = fresh.pull(target, extra_args=["--tls-verify=false"])
    head = http_request(
        "HEAD",
        f"{mirror.url}/v2/acme/{tool}/manifests/v1",
        headers={
            "Accept": ", ".join(
                [
                    images.oci_small.media_type,
                    "application/vnd.docker.distribution.manifest.v2+json",
                ]
            )
        },
    )
    assert head.status == 200 and pulled.digest == head.header("Docker-Content-Digest")
    assert upstream_proxy.requests() == []  # the hosted image never reaches the upstream
    assert hub_guard.attempts == []


def test_docker_pushes_to_a_hosted_repository_and_pulls_it_back(
    images: ImageSet,
    mirror: MirrorProcess,
    upstream_proxy: RecordingProxy,
    docker_factory: Callable[..., DockerDaemon],
    hub_guard: HubGuard,
) -> None:
    daemon = docker_factory()
    source = images.oci_small.ref  # a Docker Hub name: pulled through the mirror
    daemon.pull(source)
    target = f"{mirror.host}/acme/docker:v1"
    daemon.docker(["tag", source, target])
    out = daemon.docker(["push", target]).stdout
    pushed = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
    assert pushed is not None, out

    upstream_proxy.reset()
    fresh = docker_factory()
    assert fresh.pull(target).digest == pushed[1]
    assert upstream_proxy.requests() == []
    assert hub_guard.attempts == []
