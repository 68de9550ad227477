"""On the Docker Hub upstream, ``alpine`` is ``library/alpine``: one repository, one cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.images import manifest_digest_in_dir, pull_dir
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


def test_short_name_goes_upstream_as_library_and_shares_the_cache(
    images, mirror: MirrorProcess, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    image = images.oci_small  # pushed upstream as library/oci-small
    short = image.repo.removeprefix("library/")
    pull_dir(f"{mirror.host}/{short}:{image.tag}", tmp_path / "short")
    assert manifest_digest_in_dir(tmp_path / "short") == image.digest
    paths = [x.path for x in upstream_proxy.requests() if x.path != "/v2/"]
    assert paths and all(p.startswith(f"/v2/{image.repo}/") for p in paths)

    upstream_proxy.reset()
    pull_dir(image.on(mirror.host), tmp_path / "long")
    assert upstream_proxy.blob_gets() == []
    catalog = json.loads(http_request("GET", f"{mirror.url}/v2/_catalog").body)
    assert catalog["repositories"] == [image.repo]


def test_containerd_ns_for_docker_hub_is_accepted_and_another_registry_is_refused(
    images, mirror: MirrorProcess
) -> None:
    image = images.oci_small
    ok = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}?ns=docker.io")
    assert ok.status == 200
    other = http_request("GET", f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}?ns=ghcr.io")
    assert other.status == 404
    error = json.loads(other.body)["errors"][0]
    assert error["code"] == "NAME_UNKNOWN" and "ghcr.io" in error["message"]
