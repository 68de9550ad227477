"""``mirror.policy`` as an operator relies on it: a denied repository answers 403 DENIED
naming the rule and costs the upstream nothing, a tag deny is not got around by pulling
the digest, and a changed policy takes effect without a restart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.images import ImageSet, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

ACCEPT = {
    "Accept": ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
}
DENY_ALL = [{"upstream": "*", "repositories": ["**"], "action": "deny"}]


def _error(body: bytes) -> dict[str, Any]:
    return dict(json.loads(body)["errors"][0])


def _assert_denied(mirror: MirrorProcess, method: str, path: str, rule: str) -> None:
    got = http_request(method, mirror.url + path, headers=ACCEPT)
    assert got.status == 403, (path, got.status, got.body)
    if method == "GET":
        error = _error(got.body)
        assert error["code"] == "DENIED"
        assert f"denied by {rule}" in error["message"], error["message"]
        assert error["detail"]["rule"] == rule


def _set_policy(mirror: MirrorProcess, policy: list[dict[str, Any]]) -> None:
    doc = yaml.safe_load(mirror.config_path.read_text())
    doc["mirror"]["policy"] = policy
    mirror.config_path.write_text(yaml.safe_dump(doc))


def _wait_reread(mirror: MirrorProcess, times: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while mirror.log_text().count("mirror.policy re-read") < times:
        assert time.monotonic() < deadline, mirror.log_tail()
        time.sleep(0.05)


def test_a_denied_repository_answers_403_naming_the_rule_and_costs_zero_upstream_requests(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    image = images.oci_small
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url,
        config={
            "mirror": {
                "policy": [
                    {"upstream": "docker.io", "repositories": ["library/multi"],
                     "action": "allow"},
                    *DENY_ALL,
                ]
            }
        },
    )
    upstream_proxy.reset()
    blob = sorted(image.blob_digests)[0]
    for method in ("GET", "HEAD"):
        for path in (
            f"/v2/library/oci-small/manifests/{image.tag}",
            f"/v2/oci-small/manifests/{image.digest}",
            f"/v2/library/oci-small/blobs/{blob}",
            "/v2/library/oci-small/tags/list",
            f"/v2/docker.io/library/oci-small/manifests/{image.tag}",
            f"/v2/library/oci-small/manifests/{image.tag}?ns=docker.io",
        ):
            _assert_denied(mirror, method, path, "mirror.policy[1]")
    assert upstream_proxy.requests() == []
    # The allowed repository pulls as before.
    pull_dir(images.multi.on(mirror.host), tmp_path / "multi")
    assert upstream_proxy.count() > 0


def test_a_manifest_digest_reached_only_through_a_denied_tag_is_refused(
    mirror_factory, upstream_proxy: RecordingProxy, image_factory
) -> None:
    good = image_factory("library/tag-rules", tag="1.2")
    bad = image_factory("library/tag-rules", tag="0.9-old")
    good_index = image_factory("library/tag-rules", tag="2.0", index=True)
    bad_index = image_factory("library/tag-rules", tag="0.8-old", index=True)
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url,
        config={
            "mirror": {
                "policy": [
                    {"upstream": "docker.io", "repositories": ["library/tag-rules"],
                     "tags": ["*-old"], "action": "deny"},
                ]
            }
        },
    )
    repo = "/v2/library/tag-rules"
    upstream_proxy.reset()
    _assert_denied(mirror, "GET", f"{repo}/manifests/{bad.tag}", "mirror.policy[0]")
    # Never reached through a tag at all: refused without asking the upstream.
    _assert_denied(mirror, "GET", f"{repo}/manifests/{bad.digest}", "mirror.policy[0]")
    _assert_denied(mirror, "GET", f"{repo}/manifests/{bad_index.child_digests[0]}",
                   "mirror.policy[0]")
    assert upstream_proxy.requests() == []

    # Reached through allowed tags: the tag's own resolution and an index's children.
    for image in (good, good_index):
        by_tag = http_request("GET", f"{mirror.url}{repo}/manifests/{image.tag}", headers=ACCEPT)
        assert by_tag.status == 200 and by_tag.header("Docker-Content-Digest") == image.digest
        for digest in (image.digest, *image.child_digests):
            got = http_request("GET", f"{mirror.url}{repo}/manifests/{digest}", headers=ACCEPT)
            assert got.status == 200, (digest, got.body)
            assert got.header("Docker-Content-Digest") == digest
    # The denied tags' manifests stay refused, and the tag list leaves them out (paged too).
    for digest in (bad.digest, bad_index.digest, *bad_index.child_digests):
        _assert_denied(mirror, "GET", f"{repo}/manifests/{digest}", "mirror.policy[0]")
    tags = http_request("GET", f"{mirror.url}{repo}/tags/list")
    assert tags.status == 200 and json.loads(tags.body)["tags"] == ["1.2", "2.0"]
    first = http_request("GET", f"{mirror.url}{repo}/tags/list?n=1")
    assert json.loads(first.body)["tags"] == ["1.2"] and "last=1.2" in first.header("Link")
    second = http_request("GET", f"{mirror.url}{repo}/tags/list?n=1&last=1.2")
    assert json.loads(second.body)["tags"] == ["2.0"]


def test_a_changed_policy_file_applies_to_cached_content_without_a_restart(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    image = images.oci_small
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url)
    pull_dir(image.on(mirror.host), tmp_path / "before")
    pid = mirror.proc.pid if mirror.proc else None

    _set_policy(mirror, [{"upstream": "docker.io", "repositories": ["library/oci-*"],
                          "action": "deny"}])
    _wait_reread(mirror, 1)
    upstream_proxy.reset()
    _assert_denied(mirror, "GET", f"/v2/library/oci-small/manifests/{image.tag}",
                   "mirror.policy[0]")
    _assert_denied(mirror, "GET", f"/v2/library/oci-small/manifests/{image.digest}",
                   "mirror.policy[0]")
    _assert_denied(mirror, "GET", f"/v2/library/oci-small/blobs/{sorted(image.blob_digests)[0]}",
                   "mirror.policy[0]")
    assert upstream_proxy.requests() == []  # nor served from the store

    # A file that no longer loads keeps the policy in force.
    text = mirror.config_path.read_text()
    mirror.config_path.write_text(text.replace("action: deny", "action: maybe"))
    deadline = time.monotonic() + 10
    while "re-reading" not in mirror.log_text():
        assert time.monotonic() < deadline, mirror.log_tail()
        time.sleep(0.05)
    assert "mirror.policy[0].action" in mirror.log_text()
    _assert_denied(mirror, "GET", f"/v2/library/oci-small/manifests/{image.tag}",
                   "mirror.policy[0]")
    assert mirror.proc is not None and mirror.proc.pid == pid and mirror.proc.poll() is None


def test_sighup_rereads_the_policy(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet
) -> None:
    image = images.oci_small
    mirror: MirrorProcess = mirror_factory(
        upstream_proxy.url, config={"mirror": {"policy": DENY_ALL}}, start=False
    )
    with mirror.config_path.open("a") as f:
        f.write("# pad\n")
    mirror.start()
    path = f"/v2/library/oci-small/manifests/{image.tag}"
    _assert_denied(mirror, "GET", path, "mirror.policy[0]")
    # The same inode, size and mtime: the file watcher cannot tell, only SIGHUP can.
    before = os.stat(mirror.config_path)
    text = mirror.config_path.read_text()
    changed = text.replace("action: deny", "action: allow").replace("# pad", "# pa")
    assert len(changed) == len(text)
    mirror.config_path.write_text(changed)
    os.utime(mirror.config_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(mirror.config_path).st_ino == before.st_ino
    time.sleep(1.5)  # the watcher looks once a second: it must not have re-read
    assert "mirror.policy re-read" not in mirror.log_text()
    assert mirror.proc is not None
    mirror.proc.send_signal(signal.SIGHUP)
    _wait_reread(mirror, 1)
    got = http_request("GET", mirror.url + path, headers=ACCEPT)
    assert got.status == 200 and got.header("Docker-Content-Digest") == image.digest


def test_the_catalog_leaves_out_cached_repositories_the_policy_now_denies(
    mirror_factory, upstream_proxy: RecordingProxy, images: ImageSet, tmp_path: Path
) -> None:
    image = images.oci_small
    mirror: MirrorProcess = mirror_factory(upstream_proxy.url)
    pull_dir(image.on(mirror.host), tmp_path / "pulled")
    mirror.stored_files()  # settled: indexed
    listed = json.loads(http_request("GET", f"{mirror.url}/v2/_catalog").body)["repositories"]
    assert image.repo in listed

    _set_policy(mirror, [{"upstream": "docker.io", "repositories": [image.repo],
                          "action": "deny"}])
    _wait_reread(mirror, 1)
    got = http_request("GET", f"{mirror.url}/v2/_catalog")
    assert got.status == 200
    assert image.repo not in json.loads(got.body)["repositories"]
