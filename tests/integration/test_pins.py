"""Pins as an operator relies on them: pinned images (every platform, every layer) survive a
``maxsize`` squeeze and a TTL that remove everything else; ``pullthrough pin`` adds pins at
run time; ``ls`` marks pinned images; pins alone over ``maxsize`` are said so."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import ImageSet, PushedImage, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, free_port, http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIN_MULTI = {"pins": [{"upstream": "docker.io", "repository": "library/multi", "tags": ["v*"]}]}


def pullthrough(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pullthrough", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(None),
    )
    assert done.returncode == 0, done.stderr
    return done


def everything(image: PushedImage) -> set[str]:
    return {image.digest, *image.child_digests, *image.blob_digests}


def wait_stored(mirror: MirrorProcess, wanted: set[str], timeout: float = 20.0) -> set[str]:
    """Wait (bounded) until the store holds exactly ``wanted``; returns what it holds."""
    deadline = time.monotonic() + timeout
    while True:
        held = set(mirror.stored_files())
        if held == wanted or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def wait_gone(mirror: MirrorProcess, gone: set[str], timeout: float = 20.0) -> set[str]:
    """Wait (bounded) until none of ``gone`` is stored; returns what the store holds."""
    deadline = time.monotonic() + timeout
    while True:
        held = set(mirror.stored_files())
        if not held & gone or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def test_pins_survive_a_maxsize_squeeze_that_evicts_everything_else(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    pinned, other = images.multi, images.oci_small
    port = free_port()
    config: dict[str, Any] = {
        "http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}},
        "mirror": {"maxsize": "700KiB", "gc_interval": "1s", **PIN_MULTI},
    }
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url, config=config)
    # The pinned image is pulled first: the least recently used, the first to go unpinned.
    pull_dir(pinned.on(mirror.host), tmp_path / "pinned", all=True)  # every platform
    pull_dir(other.on(mirror.host), tmp_path / "other")  # 1.3 MiB more: over maxsize
    # Eviction stops under 90% of maxsize: the other image's layers (its bytes) go, a
    # manifest or config of a few hundred bytes may stay; nothing pinned goes.
    layers = set(other.source.layer_digests)
    held = wait_gone(mirror, layers)
    assert not held & layers
    assert everything(pinned) <= held

    rows = json.loads(pullthrough("ls", str(mirror.config_path), "--json").stdout)["images"]
    marked = {r["repository"]: r["pinned"] for r in rows}
    assert marked["library/multi"] is True
    assert marked.get("library/oci-small", False) is False  # its manifest may still be here

    # Pinned at run time: kept too, though pins alone are now over maxsize.
    pullthrough("pin", str(mirror.config_path), "oci-small:v1")
    listed = pullthrough("pins", str(mirror.config_path)).stdout
    assert "docker.io/library/oci-small:v1\tpullthrough pin" in listed
    assert "docker.io/library/multi:v*\tmirror.pins" in listed
    # Over maxsize with nothing to evict, new content is not kept, pinned content is: once
    # a sweep has seen the pinned manifest (every second here), its blobs are kept.
    pull_dir(other.on(mirror.host), tmp_path / "again")
    time.sleep(2)
    pull_dir(other.on(mirror.host), tmp_path / "twice")
    time.sleep(2)
    both = everything(pinned) | everything(other)
    assert set(mirror.stored_files()) == both
    assert "pinned content alone" in mirror.log_text()
    metrics = http_request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    assert "pullthrough_pins_over_limit 1.0" in metrics

    # Unpinned: ordinary content again, evicted by the next sweeps.
    pullthrough("unpin", str(mirror.config_path), "oci-small:v1")
    held = wait_gone(mirror, layers)
    assert not held & layers
    assert everything(pinned) <= held


def test_pins_survive_the_ttl(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    pinned, other = images.multi, images.oci_small
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url,
        config={"proxy": {"ttl": "2s"}, "mirror": {"gc_interval": "1s", **PIN_MULTI}},
    )
    pull_dir(pinned.on(mirror.host), tmp_path / "pinned", all=True)  # every platform
    pull_dir(other.on(mirror.host), tmp_path / "other")
    assert wait_stored(mirror, everything(pinned)) == everything(pinned)


def test_gc_from_the_command_line_keeps_pins(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    pinned, other = images.multi, images.oci_small
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url,
        # The server does not sweep in this test: only pullthrough gc does.
        config={"proxy": {"ttl": "1s"}, "mirror": {"gc_interval": "1h", **PIN_MULTI}},
    )
    pull_dir(pinned.on(mirror.host), tmp_path / "pinned", all=True)
    pull_dir(other.on(mirror.host), tmp_path / "other")
    time.sleep(6)  # past the TTL, and past the server's access-time flush (5 s)
    pullthrough("gc", str(mirror.config_path))
    assert set(mirror.stored_files()) == everything(pinned)
