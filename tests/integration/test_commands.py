"""The operator's commands run as a user runs them (``python -m pullthrough <command>``)
against the store of a real mirror: ls, du, verify [--repair], warm [--mirror]."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import KiB, MiB
from tests.support.images import ImageSet, Index, PushedImage, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, free_port, http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


def pullthrough(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullthrough", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(env),
        cwd=cwd,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def image_digests(image: PushedImage) -> set[str]:
    """Everything a full pull of ``image`` stores: its manifests and blobs."""
    return {image.digest, *image.child_digests, *image.blob_digests}


def pull(mirror: MirrorProcess, image: PushedImage, dest: Path) -> None:
    pull_dir(image.on(mirror.host), dest, all=image.is_index)


def get_blob(mirror: MirrorProcess, repo: str, digest: str) -> bytes:
    resp = http_request("GET", f"{mirror.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert resp.status == 200, resp.body[:300]
    return resp.body


# --- ls -------------------------------------------------------------------------------------


def test_ls_lists_tags_with_image_size_and_untagged_repositories(
    images: ImageSet,
    image_factory: Any,
    mirror: MirrorProcess,
    tmp_path: Path,
) -> None:
    pull(mirror, images.oci_small, tmp_path / "small")
    pull(mirror, images.multi, tmp_path / "multi")
    loose = image_factory("library/loose", layers=(64 * KiB,))
    loose_layer = sorted(loose.blob_digests)[0]
    get_blob(mirror, loose.repo, loose_layer)  # a blob, but never a manifest or tag

    stored = mirror.stored_files()
    listed = as_json(pullthrough("ls", str(mirror.config_path), "--json"))["images"]
    by_repo = {(row["repository"], row["tag"]): row for row in listed}

    small = by_repo[("library/oci-small", "v1")]
    assert small["upstream"] == "docker.io"
    assert small["digest"] == images.oci_small.digest
    wanted = image_digests(images.oci_small)
    assert small["size"] == sum(stored[d].stat().st_size for d in wanted)
    assert (small["objects"], small["missing"]) == (len(wanted), 0)
    assert datetime.fromisoformat(small["last_access"].replace("Z", "+00:00"))

    # An index counts its platform manifests and their blobs too.
    multi = by_repo[("library/multi", "v1")]
    assert multi["digest"] == images.multi.digest
    assert multi["media_type"] == images.multi.media_type
    wanted = image_digests(images.multi)
    assert multi["size"] == sum(stored[d].stat().st_size for d in wanted)
    assert multi["objects"] == len(wanted)

    only_blobs = by_repo[("library/loose", None)]
    assert only_blobs["digest"] is None
    assert only_blobs["size"] == stored[loose_layer].stat().st_size

    text = ok(pullthrough("ls", str(mirror.config_path)))
    line = next(line for line in text.splitlines() if "library/oci-small" in line)
    assert images.oci_small.digest in line and " v1 " in line
    assert any("library/loose" in line and "<none>" in line for line in text.splitlines())


# --- du -------------------------------------------------------------------------------------


def test_du_counts_shared_blobs_per_repository_and_once_in_the_total(
    images: ImageSet, mirror_factory: Any, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config={"mirror": {"maxsize": "100MiB"}})
    # The same config and layers under two repositories (OCI and schema2 manifests).
    pull(mirror, images.oci_small, tmp_path / "oci")
    pull(mirror, images.schema2, tmp_path / "schema2")

    report = as_json(pullthrough("du", str(mirror.config_path), "--json"))
    stored = mirror.stored_files()
    on_disk = sum(p.stat().st_size for p in stored.values())
    assert report["total"] == {"objects": len(stored), "bytes": on_disk}
    assert (report["disk"]["files"], report["disk"]["bytes"]) == (len(stored), on_disk)
    assert report["disk"]["allocated"] >= on_disk

    repos = {r["repository"]: r for r in report["repositories"]}
    for image in (images.oci_small, images.schema2):
        wanted = image_digests(image)
        assert repos[image.repo]["objects"] == len(wanted)
        assert repos[image.repo]["bytes"] == sum(stored[d].stat().st_size for d in wanted)
    shared = sum(stored[d].stat().st_size for d in images.oci_small.blob_digests)
    assert repos[images.oci_small.repo]["bytes"] + repos[images.schema2.repo]["bytes"] == (
        on_disk + shared
    )
    assert report["upstreams"] == [
        {"upstream": "docker.io", "objects": len(stored), "bytes": on_disk}
    ]
    assert report["maxsize"]["bytes"] == 100 * MiB

    text = ok(pullthrough("du", str(mirror.config_path)))
    assert f"total: {len(stored)} objects" in text and f"({on_disk} bytes)" in text
    assert "maxsize: 100.0 MiB" in text
    assert "disagree" not in text


# --- verify ---------------------------------------------------------------------------------


def test_verify_finds_a_corrupt_blob_and_repair_makes_the_mirror_refetch_it(
    images: ImageSet, mirror: MirrorProcess, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    image = images.oci_small
    pull(mirror, image, tmp_path / "pull")
    layer = max(image.blob_digests, key=lambda d: mirror.stored_files()[d].stat().st_size)
    path = mirror.stored_files()[layer]
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    path.write_bytes(flipped)  # bit rot: same file, same size, one byte off

    found = pullthrough("verify", str(mirror.config_path))
    assert found.returncode == 1, found.stdout + found.stderr
    corrupt = [line for line in found.stdout.splitlines() if line.startswith("corrupt ")]
    assert len(corrupt) == 1 and layer in corrupt[0]
    assert path.exists()  # without --repair nothing changes

    repaired = pullthrough("verify", str(mirror.config_path), "--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr  # something was wrong
    assert f"removed {layer}" in repaired.stdout
    assert not path.exists()
    ok(pullthrough("verify", str(mirror.config_path)))  # clean now

    upstream_proxy.reset()
    body = get_blob(mirror, image.repo, layer)
    assert body == good
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer
    assert [e.path.rsplit("/", 1)[-1] for e in upstream_proxy.blob_gets()] == [layer]
    assert mirror.stored_files()[layer].read_bytes() == good  # stored again, correct


# --- warm -----------------------------------------------------------------------------------


def test_warm_through_a_running_mirror_then_a_pull_sends_no_blob_upstream(
    image_factory: Any, mirror: MirrorProcess, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    image = image_factory("library/warm-http", layers=(512 * KiB, 256 * KiB))
    result = pullthrough("warm", "--mirror", mirror.url, "warm-http:v1")
    out = ok(result)
    pulled = {
        line.split()[1]: int(line.split()[2])
        for line in out.splitlines()
        if line.startswith("pulled ")
    }
    assert set(pulled) == image_digests(image)
    stored = mirror.stored_files()
    assert all(pulled[d] == stored[d].stat().st_size for d in pulled)
    assert len(upstream_proxy.blob_gets()) == len(image.blob_digests)

    upstream_proxy.reset()
    pull(mirror, image, tmp_path / "pull")
    assert upstream_proxy.blob_gets() == []


def test_warm_directly_fills_the_store_of_a_stopped_mirror(
    image_factory: Any, mirror_factory: Any, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    first = image_factory("library/warm-one", layers=(300 * KiB,))
    second = image_factory("team/warm-two", layers=(200 * KiB, 100 * KiB))
    mirror = mirror_factory(upstream_proxy.url, start=False)

    out = ok(
        pullthrough("warm", str(mirror.config_path), "warm-one:v1", "docker.io/team/warm-two:v1")
    )
    assert f"warmed warm-one:v1 ({first.digest})" in out
    assert image_digests(first) | image_digests(second) <= set(mirror.stored_files())
    assert len(upstream_proxy.blob_gets()) == len(first.blob_digests | second.blob_digests)

    upstream_proxy.reset()
    again = ok(pullthrough("warm", str(mirror.config_path), f"{second.repo}@{second.digest}"))
    assert "(cached)" in again
    assert upstream_proxy.blob_gets() == []

    mirror.start()
    pull(mirror, first, tmp_path / "first")
    pull(mirror, second, tmp_path / "second")
    assert upstream_proxy.blob_gets() == []


def test_warm_without_a_config_file_takes_every_argument_as_an_image(
    image_factory: Any, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    one = image_factory("library/noconf-one")
    two = image_factory("library/noconf-two")
    env = {  # the embedded default (store in ./data), pointed at the test upstream
        "REGISTRY_PROXY_REMOTEURL": upstream_proxy.url,
        "REGISTRY_HTTP_ADDR": f"127.0.0.1:{free_port()}",
    }
    out = ok(pullthrough("warm", "noconf-one:v1", "noconf-two:v1", env=env, cwd=tmp_path))
    assert f"warmed noconf-one:v1 ({one.digest})" in out
    assert f"warmed noconf-two:v1 ({two.digest})" in out
    stored = {p.name for p in (tmp_path / "data" / "blobs").glob("*/*/*")}
    assert {d.split(":")[1] for d in image_digests(one) | image_digests(two)} <= stored


def test_warm_one_platform_of_an_index_stores_only_its_blobs(
    images: ImageSet, mirror_factory: Any, upstream_proxy: RecordingProxy
) -> None:
    image = images.multi
    source = image.source
    assert isinstance(source, Index)
    arm64, amd64 = source.image_for("arm64"), source.image_for("amd64")
    mirror = mirror_factory(upstream_proxy.url, start=False)

    out = ok(pullthrough("warm", "--platform", "linux/arm64", str(mirror.config_path), image.ref))
    stored = set(mirror.stored_files())
    assert {image.digest, arm64.manifest_digest, *arm64.blob_digests} == stored
    assert not ({amd64.manifest_digest, *amd64.blob_digests} & stored)
    assert "1 image," in out

    row = next(
        r
        for r in as_json(pullthrough("ls", str(mirror.config_path), "--json"))["images"]
        if r["repository"] == image.repo
    )
    # The amd64 manifest is missing (what it references is unknown without it).
    assert (row["objects"], row["missing"]) == (len(stored), 1)


def test_warm_failures_exit_1_with_the_registry_error(
    images: ImageSet, mirror: MirrorProcess, mirror_factory: Any, upstream_proxy: RecordingProxy
) -> None:
    through = pullthrough("warm", "--mirror", mirror.url, "library/oci-small:nope")
    assert through.returncode == 1
    assert "error: library/oci-small:nope: MANIFEST_UNKNOWN:" in through.stderr

    stopped = mirror_factory(upstream_proxy.url, start=False)
    direct = pullthrough("warm", str(stopped.config_path), "library/oci-small:nope")
    assert direct.returncode == 1
    assert "MANIFEST_UNKNOWN" in direct.stderr

    platform = pullthrough(
        "warm", "--platform", "linux/s390x", str(stopped.config_path), images.multi.ref
    )
    assert platform.returncode == 1
    assert "has no manifest for linux/s390x (it has: linux/amd64, linux/arm64)" in platform.stderr

    # mirror.policy refuses a direct warm what it refuses a client, and asks no upstream.
    denying = mirror_factory(
        upstream_proxy.url,
        start=False,
        config={"mirror": {"policy": [{"upstream": "docker.io",
                                       "repositories": ["library/oci-*"], "action": "deny"}]}},
    )
    upstream_proxy.reset()
    denied = pullthrough("warm", str(denying.config_path), images.oci_small.ref)
    assert denied.returncode == 1
    assert f"error: {images.oci_small.ref}: DENIED:" in denied.stderr
    assert "mirror.policy[0]" in denied.stderr
    assert upstream_proxy.requests() == []

    # Warming the store of a mirror that is running would pull its temp files from under it.
    busy = pullthrough("warm", str(mirror.config_path), images.oci_small.ref)
    assert busy.returncode == 2
    assert f"--mirror {mirror.url}" in busy.stderr
