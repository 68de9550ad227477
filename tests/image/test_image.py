"""The Dockerfile's image, built and run with podman as people run registry:2: a config at
/etc/docker/registry/config.yml, a volume at /var/lib/registry, a read-only root.

Slow (two Debian bases and two builds once per session, one on Debian's python3 and one on a
CPython in /usr/local as python:3.11-slim has it: about 3 min in all on an idle 2-core
machine, more on a loaded one), but run in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.image.conftest import PYTHON, UID, ULIMITS, BuiltImage, Container, python_in_image
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
    show = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
    status, cmdline = (
        container.podman(["exec", container.name, PYTHON, "-c", show, path]).stdout
        for path in ("/proc/1/status", "/proc/1/cmdline")
    )
    assert f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}" in status
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
    script = (
        "import subprocess, sys\n"
        "for path in sys.argv[1:]:\n"
        "    print('exit', subprocess.run(['pullthrough', 'check', path]).returncode)"
    )
    checked = podman(
        [*base, *mounts, "--entrypoint", PYTHON, built_image.ref, "-c", script]
        + [f"/checked/{c.name}" for c in cases]
    )
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


# The target for the image.
SIZE_LIMIT = 150e6
# What the image is made of: no .py, no __pycache__, no stubs, anywhere (the venv and the
# standard library are bytecode only); what is in /opt/pullthrough and /usr; which programs
# but python came along (a shell, dpkg); what is left in /tmp.
SURVEY = """
import json, os, sys
found, sizes = [], {}
for top in ("/opt/pullthrough", "/usr", "/etc"):
    for directory, dirs, files in os.walk(top):
        found += [os.path.join(directory, n) for n in dirs + files
                  if n.endswith((".py", ".pyi")) or n == "__pycache__"]
        sizes[top] = sizes.get(top, 0) + sum(
            os.lstat(os.path.join(directory, n)).st_size for n in files)
programs = sorted({
    os.path.realpath(os.path.join(d, n))
    for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
    if os.path.isdir(d)
    for n in os.listdir(d)
    if os.access(os.path.join(d, n), os.X_OK)
} - {os.path.realpath(sys.executable)})
print(json.dumps({"found": found, "sizes": sizes, "programs": programs,
                  "tmp": os.listdir("/tmp"), "stdlib": os.path.dirname(os.__file__),
                  "prefix": sys.base_prefix, "python": os.path.realpath(sys.executable),
                  "usr_local_lib": sorted(os.listdir("/usr/local/lib"))
                  if os.path.isdir("/usr/local/lib") else []}))
"""


def test_the_image_is_the_server_and_its_runtime_in_bytecode_under_its_size(
    built_image: BuiltImage,
) -> None:
    """Sources, __pycache__ and stubs are not shipped, nor the base's shell and package
    manager: a regression in the Dockerfile's pruning or in runtime_root.py fails here (the
    build's own check fails on anything the server needs and lacks)."""
    survey = json.loads(python_in_image(built_image.containers, built_image.ref, SURVEY))
    print(
        f"\nimage {built_image.size_bytes / 1e6:.1f} MB, {len(built_image.packages)} Debian "
        f"packages' files; "
        + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in survey["sizes"].items())
    )
    assert survey["found"] == [], survey["found"][:20]
    assert survey["stdlib"].startswith("/usr/lib/python3")  # the base's, not another copy
    assert survey["programs"] == [] and survey["tmp"] == [], survey
    packages = set(built_image.packages)
    assert {"libc6", "ca-certificates"} <= packages, packages
    assert any(p.startswith("libssl3") for p in packages), packages  # libssl3t64 on trixie
    assert built_image.size_bytes < SIZE_LIMIT, built_image.size_bytes


def test_on_a_base_laid_out_like_python_slim_the_image_serves_a_pull(
    run_container: RunContainer,
    slim_like_image: BuiltImage,
    upstream: Registry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    """The default BASE's layout (CPython in /usr/local, a shared libpython found through
    ld.so.cache), which Debian's python3 does not have: runtime_root.py finds that
    interpreter's standard library, extensions and libpython, and the image serves."""
    survey = json.loads(python_in_image(slim_like_image.containers, slim_like_image.ref, SURVEY))
    assert survey["prefix"] == "/usr/local", survey
    assert survey["python"].startswith("/usr/local/bin/python3."), survey
    assert any(n.startswith("libpython3.") for n in survey["usr_local_lib"]), survey
    assert survey["found"] == [] and survey["programs"] == [], survey
    print(f"\nslim-like image {slim_like_image.size_bytes / 1e6:.1f} MB")
    assert slim_like_image.size_bytes < SIZE_LIMIT, slim_like_image.size_bytes

    image_factory("image/slim", layers=(1 * MiB,))
    mirror = Mirror(tmp_path, upstream.url)
    container = run_container(*mirror.run_args(), image=slim_like_image)
    mirror.wait_answering(container)
    via_mirror, direct = tmp_path / "via-mirror", tmp_path / "direct"
    pull_dir(f"{mirror.host}/image/slim:v1", via_mirror)
    pull_dir(f"{upstream.host}/image/slim:v1", direct)
    assert blob_digests_in_dir(via_mirror) == blob_digests_in_dir(direct)
    check = container.podman(["healthcheck", "run", container.name], check=False)
    assert check.returncode == 0, check.stdout + check.stderr + container.logs()
