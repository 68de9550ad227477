from __future__ import annotations

import pytest

from pullthrough.errors import DigestInvalid, NameInvalid, TagInvalid
from pullthrough.reference import (
    normalize_docker_hub,
    parse_digest,
    validate_name,
    validate_tag,
)

GOOD_HEX = "a" * 64


@pytest.mark.parametrize("name", ["alpine", "library/alpine", "a/b/c", "my-org/app_1.2", "a__b"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "UPPER", "../etc", "a/../b", "a//b", "/a", "a/", "a..b", "a%2fb", "a b", "-a", "a" * 256],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "A" * 129, "a/b", "a:b"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)


def test_digest_parses_and_prints() -> None:
    digest = parse_digest(f"sha256:{GOOD_HEX}")
    assert (digest.algorithm, digest.hex, str(digest)) == ("sha256", GOOD_HEX, f"sha256:{GOOD_HEX}")
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256:../../" + "a" * 58,
        "md5:" + "a" * 32,
        "sha256",
        "",
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
    ],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(text)


def test_docker_hub_official_images_live_under_library() -> None:
    assert normalize_docker_hub("alpine") == "library/alpine"
    assert normalize_docker_hub("bitnami/redis") == "bitnami/redis"
