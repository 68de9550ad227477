from __future__ import annotations

import json

from pullthrough.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    KNOWN_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    acceptable,
    children,
    detect_media_type,
    parse_accept,
    upstream_accept,
)


def test_accept_reads_every_header_line_like_docker_sends_them() -> None:
    lines = [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json;q=0.9",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
    ]
    assert parse_accept(lines) == (
        DOCKER_MANIFEST,
        DOCKER_LIST,
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
    )


def test_upstream_is_asked_for_every_type_the_mirror_stores() -> None:
    assert upstream_accept(()) == KNOWN_TYPES
    assert upstream_accept(("*/*",)) == KNOWN_TYPES
    # Never the client's list alone: the upstream would refuse a tag of another type.
    assert upstream_accept((OCI_MANIFEST,)) == KNOWN_TYPES
    assert upstream_accept((DOCKER_SCHEMA1, OCI_MANIFEST)) == (DOCKER_SCHEMA1, *KNOWN_TYPES)


def test_acceptable() -> None:
    assert acceptable(OCI_INDEX, ())
    assert acceptable(OCI_INDEX, (OCI_INDEX, OCI_MANIFEST))
    assert not acceptable(OCI_INDEX, (DOCKER_MANIFEST,))


def test_media_type_comes_from_the_body_first() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST}).encode()
    assert detect_media_type(body, "application/json") == DOCKER_MANIFEST
    assert detect_media_type(b'{"schemaVersion": 2}', OCI_MANIFEST + "; x=y") == OCI_MANIFEST


def test_children_of_manifest_and_index() -> None:
    manifest = {
        "config": {"digest": "sha256:c"},
        "layers": [{"digest": "sha256:l1"}, {"digest": "sha256:l2"}, {"nodigest": 1}],
    }
    kids = children(json.dumps(manifest).encode())
    assert kids.blobs == ("sha256:c", "sha256:l1", "sha256:l2")
    index = {"manifests": [{"digest": "sha256:m1"}, {"digest": "sha256:m2"}]}
    assert children(json.dumps(index).encode()).manifests == ("sha256:m1", "sha256:m2")
    assert children(b"not json").blobs == ()


def test_children_only_through_the_fields_the_media_type_defines() -> None:
    # What a manifest references becomes readable with it: a field its type does not
    # define (blobs, subject, manifests in an image manifest) must not reference anything.
    image = {
        "mediaType": OCI_MANIFEST,
        "config": {"digest": "sha256:c"},
        "layers": [{"digest": "sha256:l"}],
        "blobs": [{"digest": "sha256:b"}],
        "manifests": [{"digest": "sha256:m"}],
        "subject": {"digest": "sha256:s"},
    }
    assert children(json.dumps(image).encode()).all == ("sha256:c", "sha256:l")
    index = {
        "mediaType": OCI_INDEX,
        "manifests": [{"digest": "sha256:m"}],
        "config": {"digest": "sha256:c"},
        "layers": [{"digest": "sha256:l"}],
        "subject": {"digest": "sha256:s"},
    }
    assert children(json.dumps(index).encode()).all == ("sha256:m",)
    # The type checked on arrival (Content-Type when the body names none) decides.
    untyped = {"config": {"digest": "sha256:c"}, "manifests": [{"digest": "sha256:m"}]}
    assert children(json.dumps(untyped).encode(), DOCKER_LIST).all == ("sha256:m",)
    assert children(json.dumps(untyped).encode(), DOCKER_MANIFEST).all == ("sha256:c",)
    artifact = {"mediaType": "application/vnd.oci.artifact.manifest.v1+json",
                "blobs": [{"digest": "sha256:b"}]}
    assert children(json.dumps(artifact).encode()).all == ()
