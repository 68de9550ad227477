"""The image, built from the repository's Dockerfile once per session, and podman to run it.

No container registry is reachable from the test machines, so the bases are made here:
minimal Debian root filesystems with Debian's python3 (``mmdebstrap``, from the machine's own
apt sources), imported with ``podman import`` and given to the build as ``BASE`` and, with
the venv module and binutils added, ``BUILD_BASE``; a second pair adds the suite's own
CPython under /usr/local (``slim_like_image``). The build stage's ``pip wheel`` reaches the
Python package index with the host network and CA bundle.
Everything lives in a private vfs store in a temp dir, removed at the end of the session;
containers are removed by name when each test ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.clients import BUILDAH, PODMAN, require, require_root
from tests.support.host import host_entries
from tests.support.net import clean_env

REPO = Path(__file__).resolve().parents[2]
MMDEBSTRAP = "/usr/bin/mmdebstrap"
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"
UID = 10001  # the Dockerfile's default
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# podman run fails to set the machine's own rlimits ("error setting rlimit type 7");
# explicit limits within them work (docs/containers.md).
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]


def _suite() -> str:
    """The machine's Debian release, so mmdebstrap can use its apt sources unchanged."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip('"')
    return "bookworm"


class Containers:
    """``podman`` and ``buildah`` on one private store (root, runroot, tmp, config)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # podman refuses a runroot longer than 50 characters; pytest's tmp dirs are longer.
        self.runroot = Path(tempfile.mkdtemp(prefix="pt-img-", dir="/tmp"))
        for sub in ("root", "tmp", "net"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{workdir / "root"}"\n'
            f'runroot = "{self.runroot}"\n'
        )
        (workdir / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{workdir / "net"}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{workdir / "tmp"}"\n'
            f'static_dir = "{workdir / "root" / "libpod"}"\n'
            f'volume_path = "{workdir / "root" / "volumes"}"\n'
        )
        self.env = clean_env(
            {
                "CONTAINERS_STORAGE_CONF": str(workdir / "storage.conf"),
                "CONTAINERS_CONF": str(workdir / "containers.conf"),
                "TMPDIR": str(workdir / "tmp"),
                # util-linux's mount (mmdebstrap's, for /proc and /dev in its chroot)
                # records mounts in /run/mount/utab, which it makes on the host otherwise.
                "LIBMOUNT_UTAB": str(workdir / "utab"),
            }
        )
        self.store = [
            "--root", str(workdir / "root"),
            "--runroot", str(self.runroot),
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def podman(
        self, args: Sequence[str], *, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [PODMAN, *self.store, "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        return self._run([*cmd, *args], timeout, check)

    def buildah(self, args: Sequence[str], *, timeout: float = 600.0) -> str:
        return self._run([BUILDAH, *self.store, *args], timeout, True).stdout

    def _run(
        self, cmd: Sequence[str], timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"exit {proc.returncode}: {' '.join(cmd)}\n{proc.stdout[-3000:]}"
                f"\n{proc.stderr[-3000:]}"
            )
        return proc

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    containers: Containers
    size_bytes: int
    packages: tuple[str, ...]  # Debian packages whose files it carries


# The base the image's files come from: Debian's Essential set, python3, and what
# python:3.11-slim adds to Debian (CA certificates, netbase, tzdata) or has through apt
# (libstdc++, which frozenlist's extension loads). The build base adds the venv module and
# binutils (strip) for the build stage alone.
RUN_BASE = "localhost/pullthrough-base:test"
RUN_PACKAGES = "python3,ca-certificates,netbase,tzdata,libstdc++6"
BUILD_BASE = "localhost/pullthrough-build:test"
BUILD_PACKAGES = f"{RUN_PACKAGES},python3-venv,binutils"


def _import_bases(containers: Containers) -> None:
    """Both bases, made at once from the same apt sources (so the same python3), imported."""
    # Docs, man pages and translations are of no use in a server image; nor are glibc's
    # iconv modules (8.4 MB): Python's codecs are its own, and nothing here calls iconv.
    excludes = [
        f"--dpkgopt=path-exclude={path}"
        for path in (
            *(f"/usr/share/{d}/*" for d in ("man", "doc", "locale", "info")),
            "/usr/lib/*/gconv/*.so",
        )
    ]
    made = []
    for ref, packages in ((RUN_BASE, RUN_PACKAGES), (BUILD_BASE, BUILD_PACKAGES)):
        rootfs = containers.workdir / f"{ref.rpartition('/')[2].replace(':', '-')}.tar"
        cmd = [
            MMDEBSTRAP,
            "--quiet",
            # Debian's Essential set and what we name, without apt (minbase's ~20 MB):
            # nothing in the image installs packages.
            "--variant=essential",
            # /usr merged by symlinks as debootstrap (and so Debian's own images) does:
            # without it, bookworm's init-system-helpers pulls usrmerge, and usrmerge
            # perl (46 MB) into a server that runs no perl.
            f"--hook-dir={MERGED_USR_HOOK}",
            f"--include={packages}",
            *excludes,
            _suite(),
            str(rootfs),
        ]  # fmt: skip
        made.append((ref, rootfs, subprocess.Popen(cmd, env=containers.env)))
    try:
        for ref, _, proc in made:
            assert proc.wait(timeout=300) == 0, f"mmdebstrap for {ref}: exit {proc.returncode}"
    finally:
        for _, _, proc in made:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for ref, rootfs, _ in made:
        containers.podman(["import", str(rootfs), ref])
        rootfs.unlink()


def _build(containers: Containers, ref: str, base: str, build_base: str) -> BuiltImage:
    """The repository's Dockerfile built on ``base`` (and ``build_base``) as ``ref``."""
    start = time.monotonic()
    # pip in the build stage needs the machine's CA bundle to reach the index.
    bud = [
        "bud", "--isolation", "chroot", "--format", "docker", "--network", "host",
        "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--build-arg", f"BASE={base}", "--build-arg", f"BUILD_BASE={build_base}",
    ]  # fmt: skip
    containers.buildah([*bud, "-t", ref, str(REPO)])
    build_seconds = time.monotonic() - start
    size = int(containers.podman(["image", "inspect", "--format", "{{.Size}}", ref]).stdout)
    # The image has no dpkg (nor shell): its status file lists the packages its files come
    # from, for scanners.
    status = python_in_image(containers, ref, "print(open('/var/lib/dpkg/status').read())")
    packages = tuple(re.findall(r"^Package: (\S+)$", status, re.MULTILINE))
    print(f"\n{ref}: {size / 1e6:.1f} MB, {len(packages)} Debian packages, {build_seconds:.0f} s")
    return BuiltImage(ref, containers, size, packages)


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """``localhost/pullthrough:test``, built from the Dockerfile on a fresh Debian base."""
    require_root()
    require(PODMAN, BUILDAH, MMDEBSTRAP)
    containers = Containers(tmp_path_factory.mktemp("image"))
    # Made before any test's own check of the host (host_untouched), so checked here.
    host_before = host_entries()
    try:
        start = time.monotonic()
        _import_bases(containers)
        base_seconds = time.monotonic() - start
        print(f"\nbase rootfs {base_seconds:.0f} s")
        built = _build(containers, "localhost/pullthrough:test", RUN_BASE, BUILD_BASE)
        assert sorted(host_entries() - host_before) == []
        yield built
    finally:
        containers.close()


# python:3.11-slim's layout, which the default BASE has and Debian's python3 has not: a
# CPython built from source into /usr/local, with a shared libpython found through the
# loader's cache. The suite's own CPython is one (the machine's, built with --enable-shared);
# stripped as the official images strip theirs.
SLIM_BASE = "localhost/pullthrough-slim-base:test"
SLIM_BUILD_BASE = "localhost/pullthrough-slim-build:test"


def _usr_local_python(stage: Path) -> None:
    """The running CPython (standard library without tests, site-packages or caches) laid out
    under ``stage``/usr/local as the official images have it."""
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    library = str(sysconfig.get_config_var("INSTSONAME"))
    bin_dir, lib_dir = stage / "usr/local/bin", stage / "usr/local/lib"
    bin_dir.mkdir(parents=True)
    lib_dir.mkdir()
    shutil.copy2(prefix / "bin" / version, bin_dir / version)
    (bin_dir / "python3").symlink_to(version)
    shutil.copy2(prefix / "lib" / library, lib_dir / library)
    skipped = shutil.ignore_patterns("site-packages", "test", "tests", "__pycache__", "*.pyc")
    shutil.copytree(prefix / "lib" / version, lib_dir / version, symlinks=True, ignore=skipped)
    elf = [bin_dir / version, lib_dir / library, *(lib_dir / version).rglob("*.so")]
    subprocess.run(["strip", "--strip-unneeded", *map(str, elf)], check=True)


@pytest.fixture(scope="session")
def slim_like_image(
    built_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> BuiltImage:
    """The image built on the test bases with a /usr/local CPython added (the build base
    also gets a pip.conf naming the machine's CA bundle: Debian's pip reads the system's,
    CPython's its own certifi)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("the suite's CPython has no shared libpython (--enable-shared)")
    containers = built_image.containers
    stage = tmp_path_factory.mktemp("usr-local")
    _usr_local_python(stage)
    pip_conf = stage / "pip.conf"
    pip_conf.write_text(f"[global]\ncert = {CA_BUNDLE}\n")
    for base, made in ((RUN_BASE, SLIM_BASE), (BUILD_BASE, SLIM_BUILD_BASE)):
        container = containers.buildah(["from", base]).strip()
        containers.buildah(["copy", container, str(stage / "usr"), "/usr"])
        if made == SLIM_BUILD_BASE:
            containers.buildah(["copy", container, str(pip_conf), "/etc/pip.conf"])
        containers.buildah(["run", "--isolation", "chroot", container, "--", "/sbin/ldconfig"])
        containers.buildah(["commit", "-q", container, made])
        containers.buildah(["rm", container])
    return _build(containers, "localhost/pullthrough:slim-like", SLIM_BASE, SLIM_BUILD_BASE)


PYTHON = "/opt/pullthrough/bin/python"  # the only program in the image but pullthrough


def python_in_image(containers: Containers, ref: str, code: str, *args: str) -> str:
    """What ``python -c code args`` prints, run in a new container of the image (no network)."""
    run = ["run", "--rm", *ULIMITS, "--network", "none", "--entrypoint", PYTHON, ref]
    return containers.podman([*run, "-c", code, *args]).stdout


class Container:
    """One ``podman run -d`` of the image, removed by name at the end."""

    def __init__(self, image: BuiltImage, name: str, args: Sequence[str]) -> None:
        self.image = image
        self.name = name
        self.started = time.monotonic()
        image.containers.podman(["run", "-d", "--name", name, *ULIMITS, *args, image.ref])

    def podman(self, args: Sequence[str], **kw: float | bool) -> subprocess.CompletedProcess[str]:
        return self.image.containers.podman(args, **kw)  # type: ignore[arg-type]

    def logs(self) -> str:
        proc = self.podman(["logs", self.name], check=False)
        return proc.stdout + proc.stderr

    def state(self, field: str) -> str:
        return self.podman(["inspect", "--format", f"{{{{{field}}}}}", self.name]).stdout.strip()

    def wait_exit(self, timeout: float) -> int:
        return int(self.podman(["wait", self.name], timeout=timeout).stdout.strip())

    def remove(self) -> None:
        self.podman(["rm", "-f", "-t", "0", self.name], check=False)


@pytest.fixture
def run_container(built_image: BuiltImage) -> Iterator[object]:
    """``run_container(*podman_run_args, image=built_image) -> Container``; each is removed
    (by name) after the test, its log printed."""
    made: list[Container] = []

    def factory(*args: str, image: BuiltImage = built_image) -> Container:
        name = f"pt-test-{os.getpid()}-{len(made)}"
        container = Container(image, name, args)
        made.append(container)
        return container

    yield factory
    for container in made:
        with contextlib.suppress(Exception):
            print(f"--- {container.name}\n{container.logs()[-4000:]}")
        container.remove()
