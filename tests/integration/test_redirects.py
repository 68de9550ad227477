"""Docker Hub serves blobs by redirecting to a CDN: the mirror follows the redirect itself,
never hands it to the client, and never gives the CDN the registry's credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cdn import Cdn
from tests.support.images import blob_digests_in_dir, manifest_digest_in_dir, pull_dir
from tests.support.net import http_request

pytestmark = pytest.mark.integration

USER, PASSWORD = "hub-user", "hub-password"


def test_blob_redirects_are_followed_without_the_authorization_header(
    registry_factory, image_factory, proxy_factory, mirror_factory, tmp_path: Path
) -> None:
    upstream = registry_factory(htpasswd=(USER, PASSWORD))
    image = image_factory("team/app", registry=upstream)
    front = proxy_factory(upstream.url)
    with Cdn(
        lambda digest: upstream.blob_path(digest) if upstream.has_blob(digest) else None
    ) as cdn:
        front.redirect_blobs_to = cdn.url
        mirror = mirror_factory(
            front.url,
            config={
                "proxy": {"username": USER, "password": PASSWORD},
                # The CDN stand-in is on another loopback address, which the outbound
                # policy refuses unless allowed (a real CDN is on a public address).
                "mirror": {"outbound": {"allow": [cdn.host]}},
            },
        )

        pull_dir(image.on(mirror.host), tmp_path / "pulled")
        assert manifest_digest_in_dir(tmp_path / "pulled") == image.digest
        assert image.blob_digests <= set(blob_digests_in_dir(tmp_path / "pulled"))

        redirected = [x for x in front.requests() if x.status == 307]
        assert len(redirected) == len(image.blob_digests)
        assert all(x.request_header("Authorization") for x in redirected)  # the registry got creds
        assert len(cdn.requests) == len(image.blob_digests)
        assert [r.authorization for r in cdn.requests] == [None] * len(cdn.requests)

        layer = image.source.layer_digests[0]
        direct = http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{layer}")
        assert direct.status == 200  # the client sees the bytes, never a 3xx
        statuses = [
            line.split('" ')[1].split()[0]
            for line in mirror.log_text().splitlines()
            if "aiohttp.access" in line and '" ' in line
        ]
        assert statuses and not [s for s in statuses if s.startswith("3")]
