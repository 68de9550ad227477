"""The Dockerfile's image, built and run with podman as people run registry:2: a config at
/etc/docker/registry/config.yml, a volume at /var/lib/registry, a read-only root.

Slow (two Debian bases and a build once per session: 67 s on an idle 2-core machine, up to
3.5 min on a loaded one; 2-6 min in all), but run in CI.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.image.conftest import UID, ULIMITS, BuiltImage, Container
from tests.support import MiB
from tests.support.images import ImageFactory, blob_digests_in_dir, pull_dir
from tests.support.net import LOOPBACK, free_port
from tests.support.registry import Registry
from tests.support.slowread import read_blob

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RunContainer = Callable[..., Container]
CONFIG = "/etc/docker/registry/config.yml"
DRAIN = 15.0  # http.draintimeout in these tests' config
CUT = 3.0  # and in the environment of the container that cuts a transfer off


class Mirror:
    """Config and volume on the host for one or more containers of the image."""

    def __init__(self, tmp_path: Path, upstream_url: str) -> None:
        self.port, self.debug_port = free_port(), free_port()
        self.volume = tmp_path / "volume"
        self.volume.mkdir()
        os.chown(self.volume, UID, UID)  # as a fresh named volume of the image would be
        self.config = tmp_path / "config.yml"
        doc: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": "/var/lib/registry"}},
            "http": {
                "addr": f"{LOOPBACK}:{self.port}",
                "draintimeout": f"{DRAIN:g}s",
                "debug": {"addr": f"{LOOPBACK}:{self.debug_port}"},
            },
            "proxy": {"remoteurl": upstream_url},
        }
        self.config.write_text(yaml.safe_dump(doc))

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def run_args(self) -> list[str]:
        """The registry:2 way, read-only: config and volume mounted, /tmp a tmpfs, and the
        host network to reach the suite's loopback upstream."""
        return [
            "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "-v", f"{self.config}:{CONFIG}:ro", "-v", f"{self.volume}:/var/lib/registry",
        ]  # fmt: skip

    def wait_answering(self, container: Container, timeout: float = 30.0) -> float:
        """Seconds from ``podman run`` until ``GET /v2/`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - container.started
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"no answer on {self.host} in {timeout}s\n{container.logs()}")


def test_pull_through_the_image_matches_a_direct_copy(
    run_container: RunContainer,
    built_image: BuiltImage,
    upstream: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    pushed = image_factory("image/app", layers=(2 * MiB, 512 * 1024))
    mirror = Mirror(tmp_path, upstream.url)
    container = run_container(*mirror.run_args())
    answered = mirror.wait_answering(container)

    start = time.monotonic()
    via_mirror = tmp_path / "via-mirror"
    pull_dir(f"{mirror.host}/image/app:v1", via_mirror)
    first_pull = answered + time.monotonic() - start
    direct = tmp_path / "direct"
    pull_dir(f"{upstream.host}/image/app:v1", direct)
    assert blob_digests_in_dir(via_mirror) == blob_digests_in_dir(direct)
    manifest = (via_mirror / "manifest.json").read_bytes()
    assert manifest == (direct / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == pushed.digest

    # The server is PID 1 and runs as the image's fixed non-root UID.
    status = container.podman(["exec", container.name, "cat", "/proc/1/status"]).stdout
    assert f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}" in status
    cmdline = container.podman(["exec", container.name, "cat", "/proc/1/cmdline"]).stdout
    assert "serve\0/etc/docker/registry/config.yml" in cmdline
    # HEALTHCHECK, run by hand (podman schedules it with systemd timers, absent here).
    check = container.podman(["healthcheck", "run", container.name], check=False)
    assert check.returncode == 0, check.stdout + check.stderr + container.logs()
    assert container.state(".State.Healthcheck.Status") == "healthy"
    print(
        f"\nimage {built_image.size_bytes / 1e6:.0f} MB; podman run to /v2/ answering "
        f"{answered:.1f} s, to first pull done {first_pull:.1f} s"
    )


def test_sigterm_drains_a_cold_transfer_and_the_cache_outlives_the_container(
    run_container: RunContainer,
    upstream: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    pushed = image_factory("image/big", layers=(256 * MiB,))
    layer = pushed.source.layer_digests[0]  # type: ignore[union-attr]
    data = pushed.source.blob_file(layer).read_bytes()
    mirror = Mirror(tmp_path, upstream.url)
    first = run_container(*mirror.run_args())
    mirror.wait_answering(first)
    # The tag, so that the next container can answer it from the cache alone.
    accept = {"Accept": pushed.media_type}
    tag = urllib.request.Request(f"http://{mirror.host}/v2/image/big/manifests/v1", headers=accept)
    with urllib.request.urlopen(tag, timeout=30) as answer:
        assert answer.headers["Docker-Content-Digest"] == pushed.digest
    config = pushed.source.config_digest  # type: ignore[union-attr]
    with urllib.request.urlopen(f"http://{mirror.host}/v2/image/big/blobs/{config}") as answer:
        assert answer.read() == pushed.source.blob_file(config).read_bytes()

    got: list[int] = [0]
    result: dict[str, Any] = {}
    # 256 MiB at 40 MiB/s: ~6.5 s, inside the 15 s grace however loaded the machine is.
    reader = threading.Thread(
        target=read_blob,
        args=(mirror.host, f"/v2/image/big/blobs/{layer}", 40 * MiB, got, result),
    )
    reader.start()
    deadline = time.monotonic() + 30
    while got[0] < 16 * MiB and reader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 16 * MiB <= got[0] < len(data), (got, result)
    first.podman(["kill", "--signal", "TERM", first.name])
    stopped, at = time.monotonic(), got[0]
    code = first.wait_exit(timeout=DRAIN + 15)
    exit_seconds = time.monotonic() - stopped
    reader.join(timeout=30)
    print(f"\nSIGTERM at {at // MiB} MiB: exit {code} after {exit_seconds:.1f} s; {result}")
    assert code == 0, first.logs()
    assert exit_seconds < DRAIN + 3
    assert result["status"] == 200 and result["length"] == len(data)
    # Drained: the transfer in flight completed, every byte right.
    assert "error" not in result and got[0] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()

    # A new container on the same volume serves the cache with the upstream gone.
    upstream.stop()
    try:
        # REGISTRY_* overrides reach the server in the image as outside it: a short grace
        # for the cut-off below.
        second = run_container("-e", f"REGISTRY_HTTP_DRAINTIMEOUT={CUT:g}s", *mirror.run_args())
        mirror.wait_answering(second)
        got2, result2 = [0], {}
        read_blob(mirror.host, f"/v2/image/big/blobs/{layer}", 1 << 40, got2, result2)
        assert result2["status"] == 200 and "error" not in result2, (result2, second.logs())
        assert result2["sha256"] == hashlib.sha256(data).hexdigest()
        copy = tmp_path / "offline"
        pull_dir(f"{mirror.host}/image/big:v1", copy)
        assert set(blob_digests_in_dir(copy)) >= {layer}

        # A transfer that cannot finish within the grace is cut off when it ends: the
        # process still exits 0 in time, and the client sees a short body, never a wrong byte.
        got3: list[int] = [0]
        result3: dict[str, Any] = {}
        reader = threading.Thread(
            target=read_blob,
            args=(mirror.host, f"/v2/image/big/blobs/{layer}", 8 * MiB, got3, result3),
        )
        reader.start()
        while got3[0] < 8 * MiB and reader.is_alive():
            time.sleep(0.05)
        second.podman(["kill", "--signal", "TERM", second.name])
        stopped = time.monotonic()
        code = second.wait_exit(timeout=CUT + 15)
        cut_seconds = time.monotonic() - stopped
        reader.join(timeout=30)
        print(f"slow client: exit {code} after {cut_seconds:.1f} s at {got3[0] // MiB} MiB")
        assert code == 0 and CUT - 1 < cut_seconds < CUT + 3, second.logs()
        assert result3["length"] == len(data) and got3[0] < len(data), result3
        assert result3["sha256"] == hashlib.sha256(data[: got3[0]]).hexdigest()
    finally:
        upstream.start()


def test_a_bad_config_stops_the_container_with_the_check_message(
    built_image: BuiltImage, tmp_path: Path
) -> None:
    podman = built_image.containers.podman
    base = ["run", "--rm", "--network", "none", *ULIMITS]
    invalid = tmp_path / "invalid.yml"
    invalid.write_text('version: 0.1\nhttp: {addr: "nonsense"}\n')
    unreadable = tmp_path / "unreadable.yml"
    unreadable.write_text("version: 0.1\n")
    unreadable.chmod(0o600)  # root's: the image's user cannot read it
    cases = {
        invalid: "http.addr: expected host:port such as :5000, got 'nonsense'",
        unreadable: f"config file {CONFIG}: Permission denied",
    }
    # What `pullthrough check` says of each, in one container (each run copies the image).
    mounts = [a for c in cases for a in ("-v", f"{c}:/checked/{c.name}:ro")]
    script = "; ".join(f"pullthrough check /checked/{c.name}; echo exit $?" for c in cases)
    checked = podman([*base, *mounts, "--entrypoint", "sh", built_image.ref, "-c", script])
    for config, expected in cases.items():
        message = f"pullthrough: config error: {expected}"
        served = podman([*base, "-v", f"{config}:{CONFIG}:ro", built_image.ref], check=False)
        assert served.returncode == 2, served
        assert served.stderr.strip().endswith(message), served.stderr
        assert message.replace(CONFIG, f"/checked/{config.name}") in checked.stderr
    assert checked.stdout.split() == ["exit", "2", "exit", "2"], checked


def test_without_a_config_the_image_runs_the_embedded_default(
    run_container: RunContainer, built_image: BuiltImage
) -> None:
    container = run_container("--network", "none", "--read-only", "--tmpfs", "/tmp")
    checked = container.podman(["exec", container.name, "pullthrough", "check", CONFIG]).stdout
    assert "docker.io (https://registry-1.docker.io)" in checked
    assert "storage /var/lib/registry" in checked
    deadline = time.monotonic() + 30
    while True:
        health = container.podman(["healthcheck", "run", container.name], check=False)
        if health.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health.returncode == 0, container.logs()


# The target for the image; measured on the test's base (Debian's python3), the
# default python:3.11-slim adds its own CPython (README, "Run the image").
SIZE_LIMIT = 150e6


def test_the_image_carries_bytecode_only_and_stays_under_its_size(
    built_image: BuiltImage,
) -> None:
    """Sources, __pycache__ and stubs are not shipped (the build compiles the venv with
    ``compileall -b``): a regression in the Dockerfile's pruning fails here."""
    found = built_image.containers.podman(
        [
            "run", "--rm", *ULIMITS, "--network", "none", "--entrypoint", "find",
            built_image.ref, "/opt/pullthrough/lib",
            "(", "-name", "*.py", "-o", "-name", "__pycache__", "-o", "-name", "*.pyi", ")",
        ]  # fmt: skip
    ).stdout.split()
    assert found == [], found[:20]
    venv = built_image.containers.podman(
        [
            "run", "--rm", *ULIMITS, "--network", "none", "--entrypoint", "du",
            built_image.ref, "-s", "-B1", "/opt/pullthrough",
        ]  # fmt: skip
    ).stdout.split()[0]
    print(f"\nvenv {int(venv) / 1e6:.1f} MB, image {built_image.size_bytes / 1e6:.1f} MB")
    assert built_image.size_bytes < SIZE_LIMIT, built_image.size_bytes
