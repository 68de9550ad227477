"""Pulls through the mirror with skopeo give exactly what the upstream holds, and a second
pull is served from the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.images import (
    ImageFactory,
    ImageSet,
    PushedImage,
    blob_digests_in_dir,
    manifest_digest_in_dir,
    pull_dir,
)
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

DOCKER_ACCEPT_LINES = [
    ("Accept", "application/vnd.docker.distribution.manifest.v2+json"),
    ("Accept", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ("Accept", "application/vnd.oci.image.index.v1+json"),
    ("Accept", "application/vnd.oci.image.manifest.v1+json"),
    ("Accept", "application/vnd.docker.distribution.manifest.v1+prettyjws"),
    ("Accept", "application/json"),
]


def _image(images: ImageSet, which: str) -> PushedImage:
    image: PushedImage = getattr(images, which)
    return image


@pytest.mark.parametrize("which", ["oci_small", "schema2", "multi"])
def test_pull_through_mirror_is_byte_identical_to_pull_from_upstream(
    which: str, images: ImageSet, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = _image(images, which)
    multi = image.is_index
    direct, through = tmp_path / "direct", tmp_path / "through"
    pull_dir(image.upstream_ref, direct, all=multi)
    pull_dir(image.on(mirror.host), through, all=multi)

    assert manifest_digest_in_dir(through) == image.digest == manifest_digest_in_dir(direct)
    direct_blobs = blob_digests_in_dir(direct)  # raises if any file does not match its digest
    through_blobs = blob_digests_in_dir(through)
    assert through_blobs == direct_blobs
    assert image.blob_digests <= set(through_blobs)
    for name in ("manifest.json", *(p.name for p in direct.iterdir())):
        assert (through / name).read_bytes() == (direct / name).read_bytes(), name


@pytest.mark.parametrize("which", ["oci_small", "schema2", "multi"])
def test_pull_into_oci_layout_through_mirror(
    which: str, images: ImageSet, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = _image(images, which)
    direct, through = tmp_path / "direct", tmp_path / "through"
    pull_dir(image.upstream_ref, direct, fmt="oci", all=image.is_index)
    pull_dir(image.on(mirror.host), through, fmt="oci", all=image.is_index)
    assert blob_digests_in_dir(through) == blob_digests_in_dir(direct)
    assert (through / "index.json").read_bytes() == (direct / "index.json").read_bytes()


def test_pull_by_digest_through_mirror(
    images: ImageSet, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = images.schema2
    pull_dir(image.on(mirror.host, by_digest=True), tmp_path / "d")
    assert manifest_digest_in_dir(tmp_path / "d") == image.digest


def test_second_pull_sends_no_blob_or_manifest_by_digest_request_upstream(
    images: ImageSet, mirror: MirrorProcess, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    for image in (images.oci_small, images.multi):
        pull_dir(
            image.on(mirror.host),
            tmp_path / f"first-{image.repo.replace('/', '_')}",
            all=image.is_index,
        )
    first_blob_gets = len(upstream_proxy.blob_gets())
    assert first_blob_gets >= len(images.oci_small.blob_digests)
    upstream_proxy.reset()

    for image in (images.oci_small, images.multi):
        pull_dir(
            image.on(mirror.host),
            tmp_path / f"second-{image.repo.replace('/', '_')}",
            all=image.is_index,
        )
        pull_dir(
            image.on(mirror.host, by_digest=True),
            tmp_path / f"third-{image.repo.replace('/', '_')}",
            all=image.is_index,
        )

    seen = [(x.method, x.path) for x in upstream_proxy.requests()]
    assert upstream_proxy.blob_gets() == []
    digest_requests = [p for _, p in seen if "/manifests/sha256:" in p]
    assert digest_requests == []
    # What remains is tag revalidation: HEADs only, never a manifest GET.
    assert {m for m, p in seen if "/manifests/" in p} <= {"HEAD"}


def test_docker_style_accept_lines_get_the_manifest_type_the_upstream_holds(
    images: ImageSet, mirror: MirrorProcess
) -> None:
    import http.client

    conn = http.client.HTTPConnection(mirror.host, timeout=10)
    conn.putrequest("GET", f"/v2/{images.schema2.repo}/manifests/{images.schema2.tag}")
    for name, value in DOCKER_ACCEPT_LINES:
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/vnd.docker.distribution.manifest.v2+json"
    assert resp.getheader("Docker-Content-Digest") == images.schema2.digest
    assert body == images.schema2.raw_manifest
    conn.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_schema2_tag_answers_a_client_that_accepts_only_oci_types(
    images: ImageSet, mirror: MirrorProcess, upstream_proxy: RecordingProxy, method: str
) -> None:
    """The upstream is asked with every type the mirror stores (it would 404 an Accept of
    OCI types alone for a Docker schema 2 manifest); the tag's one manifest is the answer."""
    oci_only = ", ".join(
        ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"]
    )
    url = f"{mirror.url}/v2/{images.schema2.repo}/manifests/{images.schema2.tag}"
    for _ in ("cold", "warm"):
        resp = http_request(method, url, headers={"Accept": oci_only})
        assert resp.status == 200
        assert resp.header("Content-Type") == "application/vnd.docker.distribution.manifest.v2+json"
        assert resp.header("Docker-Content-Digest") == images.schema2.digest
        assert resp.body == (images.schema2.raw_manifest if method == "GET" else b"")
    manifest_requests = upstream_proxy.requests(path_contains="/manifests/")
    asked = [r.request_header("Accept") for r in manifest_requests]
    assert asked and all(
        "application/vnd.docker.distribution.manifest.v2+json" in ", ".join(a) for a in asked
    )


def test_tag_list_last_is_exclusive(image_factory: ImageFactory, mirror: MirrorProcess) -> None:
    for tag in ("a", "b", "multi", "v1"):
        image_factory("library/paged", tag=tag, seed="paged")
    url = f"{mirror.url}/v2/library/paged/tags/list"
    assert json.loads(http_request("GET", f"{url}?last=multi").body)["tags"] == ["v1"]
    assert json.loads(http_request("GET", f"{url}?n=1&last=a").body)["tags"] == ["b"]
    assert json.loads(http_request("GET", f"{url}?n=2&last=v1").body)["tags"] == []


def test_manifest_and_blob_heads_carry_length_and_digest(
    images: ImageSet, mirror: MirrorProcess, upstream_proxy: RecordingProxy
) -> None:
    image = images.oci_small
    head = http_request(
        "HEAD",
        f"{mirror.url}/v2/{image.repo}/manifests/{image.tag}",
        headers={"Accept": image.media_type},
    )
    assert head.status == 200
    assert head.header("Docker-Content-Digest") == image.digest
    assert int(head.header("Content-Length") or -1) == len(image.raw_manifest)

    layer = max(image.blob_digests, key=lambda d: image.source.blob_file(d).stat().st_size)
    size = image.source.blob_file(layer).stat().st_size
    upstream_proxy.reset()
    blob_head = http_request("HEAD", f"{mirror.url}/v2/{image.repo}/blobs/{layer}")
    assert blob_head.status == 200
    assert int(blob_head.header("Content-Length") or -1) == size
    assert blob_head.header("Docker-Content-Digest") == layer
    # HEAD on an uncached blob asks the upstream with HEAD only: nothing is downloaded.
    assert [x.method for x in upstream_proxy.requests(path_contains=layer)] == ["HEAD"]
    assert layer not in mirror.stored_files()


def test_range_requests_on_cold_and_warm_blobs(images: ImageSet, mirror: MirrorProcess) -> None:
    image = images.oci_small
    layer = max(image.blob_digests, key=lambda d: image.source.blob_file(d).stat().st_size)
    data = image.source.blob_file(layer).read_bytes()
    url = f"{mirror.url}/v2/{image.repo}/blobs/{layer}"
    for _ in ("cold", "warm"):
        part = http_request("GET", url, headers={"Range": "bytes=100-199"})
        assert part.status == 206
        assert part.body == data[100:200]
        assert part.header("Content-Range") == f"bytes 100-199/{len(data)}"
        tail = http_request("GET", url, headers={"Range": "bytes=-10"})
        assert (tail.status, tail.body) == (206, data[-10:])
    bad = http_request("GET", url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status == 416
    assert bad.header("Content-Range") == f"bytes */{len(data)}"
    assert json.loads(bad.body)["errors"][0]["code"] == "RANGE_INVALID"
    whole = http_request("GET", url)
    assert whole.status == 200 and whole.body == data


def test_tags_list_and_catalog_with_paging(
    images: ImageSet, mirror: MirrorProcess, image_factory: object, tmp_path: Path
) -> None:
    image = images.oci_small
    tags = http_request("GET", f"{mirror.url}/v2/{image.repo}/tags/list")
    assert tags.status == 200
    assert json.loads(tags.body)["tags"] == [image.tag]

    for pushed in (images.oci_small, images.schema2, images.multi):
        pull_dir(
            pushed.on(mirror.host), tmp_path / pushed.repo.replace("/", "_"), all=pushed.is_index
        )
    page1 = http_request("GET", f"{mirror.url}/v2/_catalog?n=2")
    assert page1.status == 200
    repos1 = json.loads(page1.body)["repositories"]
    assert repos1 == sorted([images.multi.repo, images.oci_small.repo])
    link = page1.header("Link") or ""
    assert 'rel="next"' in link and "last=" in link
    next_path = link[link.index("<") + 1 : link.index(">")]
    page2 = http_request("GET", f"{mirror.url}{next_path}")
    assert json.loads(page2.body)["repositories"] == [images.schema2.repo]
    assert page2.header("Link") is None


def test_unknown_manifest_and_blob_are_oci_404s(images: ImageSet, mirror: MirrorProcess) -> None:
    missing = http_request("GET", f"{mirror.url}/v2/library/oci-small/manifests/nope")
    assert missing.status == 404
    assert json.loads(missing.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    blob = http_request("GET", f"{mirror.url}/v2/library/oci-small/blobs/sha256:{'0' * 64}")
    assert blob.status == 404
    assert json.loads(blob.body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    repo = http_request("GET", f"{mirror.url}/v2/library/no-such-repo/tags/list")
    assert repo.status == 404
    assert json.loads(repo.body)["errors"][0]["code"] == "NAME_UNKNOWN"
