"""The offline switch as an operator uses it: an upstream switched off (``offline: true``
or ``pullthrough offline UPSTREAM on``) is sent nothing while cached images, tags included,
still pull; the rest answers 503 saying why; ``/debug/health`` shows it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import ImageSet, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, free_port, http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

ACCEPT = {
    "Accept": "application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json"
}


def pullthrough(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(None),
    )


def _with_debug(extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    port = free_port()
    config: dict[str, Any] = {"http": {"debug": {"addr": f"127.0.0.1:{port}"}}}
    config.update(extra or {})
    return config, f"http://127.0.0.1:{port}"


def _offline(debug: str, upstream: str) -> bool:
    doc = json.loads(http_request("GET", f"{debug}/debug/health").body)
    return bool(doc["checks"]["upstreams"][upstream]["offline"])


def wait_offline(debug: str, upstream: str, state: bool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _offline(debug, upstream) is not state:
        assert time.monotonic() < deadline, f"{upstream} never became offline={state}"
        time.sleep(0.05)


def switch(mirror: MirrorProcess, upstream: str, state: str) -> str:
    done = pullthrough("offline", str(mirror.config_path), upstream, state)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_offline_serves_cached_tags_with_the_upstream_reachable_and_sends_it_nothing(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    cached, uncached = images.oci_small, images.multi
    config, debug = _with_debug()
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url, config=config)
    pull_dir(cached.on(mirror.host), tmp_path / "warm")
    assert not _offline(debug, "docker.io")

    assert "docker.io is offline" in switch(mirror, "docker.io", "on")
    wait_offline(debug, "docker.io", True)
    upstream_proxy.reset()
    # A whole pull by tag, as a client does it: revalidation is skipped, not failed.
    pull_dir(cached.on(mirror.host), tmp_path / "offline")
    got = http_request(
        "GET", f"{mirror.url}/v2/library/oci-small/manifests/{cached.tag}", headers=ACCEPT
    )
    assert got.status == 200 and got.header("Docker-Content-Digest") == cached.digest
    # What is not cached: 503 saying the upstream is offline.
    for path in (
        f"/v2/library/multi/manifests/{uncached.tag}",
        f"/v2/library/multi/manifests/{uncached.digest}",
        f"/v2/library/multi/blobs/{sorted(uncached.blob_digests)[0]}",
    ):
        got = http_request("GET", mirror.url + path, headers=ACCEPT)
        assert got.status == 503, (path, got.status)
        error = json.loads(got.body)["errors"][0]
        assert error["code"] == "UNAVAILABLE" and "docker.io is offline" in error["message"]
    assert upstream_proxy.requests() == []
    status = pullthrough("offline", str(mirror.config_path), "docker.io")
    assert "docker.io is offline (set by pullthrough offline)" in status.stdout
    # The status page and its API say so too.
    (shown,) = json.loads(http_request("GET", f"{mirror.url}/ui/api/upstreams").body)["upstreams"]
    assert shown["offline"] is True
    assert '<span class="state bad offline">offline</span>' in (
        http_request("GET", f"{mirror.url}/ui/").body.decode()
    )

    switch(mirror, "docker.io", "off")
    wait_offline(debug, "docker.io", False)
    pull_dir(uncached.on(mirror.host), tmp_path / "online")
    assert upstream_proxy.count() > 0


def test_an_upstream_configured_offline_is_never_contacted_until_switched_on(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    image = images.oci_small
    config, debug = _with_debug(
        {"mirror": {"upstreams": [
            {"name": "registry.test", "remoteurl": upstream_proxy.url, "offline": True}
        ]}}
    )
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url, config=config)
    assert _offline(debug, "registry.test") and not _offline(debug, "docker.io")
    upstream_proxy.reset()
    got = http_request(
        "GET", f"{mirror.url}/v2/registry.test/library/oci-small/manifests/{image.tag}",
        headers=ACCEPT,
    )
    assert got.status == 503 and b"registry.test is offline" in got.body
    assert upstream_proxy.requests() == []
    # The run-time switch overrides the config.
    switch(mirror, "registry.test", "off")
    wait_offline(debug, "registry.test", False)
    got = http_request(
        "GET", f"{mirror.url}/v2/registry.test/library/oci-small/manifests/{image.tag}",
        headers=ACCEPT,
    )
    assert got.status == 200 and got.header("Docker-Content-Digest") == image.digest


def test_offline_rejects_unknown_upstreams_and_bad_states(
    mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url, start=False)
    unknown = pullthrough("offline", str(mirror.config_path), "quay.io", "on")
    assert unknown.returncode == 2 and "'quay.io' is no configured upstream" in unknown.stderr
    bad = pullthrough("offline", str(mirror.config_path), "docker.io", "maybe")
    assert bad.returncode == 2 and "usage" in bad.stderr
