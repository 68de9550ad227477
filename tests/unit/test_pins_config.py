"""``mirror.pins``: one pin per tag glob, Docker Hub's ``library/``, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pullthrough.config import ConfigError, load
from pullthrough.config.model import Pin


def _load(tmp_path: Path, pins: object) -> tuple[Pin, ...]:
    path = tmp_path / "config.yml"
    doc = {"version": 0.1, "mirror": {"pins": pins, "upstreams": [
        {"name": "ghcr.io", "remoteurl": "https://ghcr.io"}]}}
    path.write_text(yaml.safe_dump(doc))
    return load(path, environ={}).pins


def test_each_tag_glob_is_a_pin_and_hub_names_gain_library(tmp_path: Path) -> None:
    pins = _load(tmp_path, [
        {"upstream": "docker.io", "repository": "alpine", "tags": ["3.*", "edge"]},
        {"upstream": "ghcr.io", "repository": "acme/app", "tags": ["v1"]},
    ])
    assert [str(p) for p in pins] == [
        "docker.io/library/alpine:3.*", "docker.io/library/alpine:edge", "ghcr.io/acme/app:v1"
    ]


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"repository": "alpine", "tags": ["3"]}, "mirror.pins[0].upstream"),
        ({"upstream": "quay.io", "repository": "alpine", "tags": ["3"]},
         "mirror.pins[0].upstream"),
        ({"upstream": "docker.io", "tags": ["3"]}, "mirror.pins[0].repository"),
        ({"upstream": "docker.io", "repository": "library/*", "tags": ["3"]},
         "mirror.pins[0].repository"),
        ({"upstream": "docker.io", "repository": "Alpine", "tags": ["3"]},
         "mirror.pins[0].repository"),
        ({"upstream": "docker.io", "repository": "alpine"}, "mirror.pins[0].tags"),
        ({"upstream": "docker.io", "repository": "alpine", "tags": ["3", "a b"]},
         "mirror.pins[0].tags[1]"),
    ],
)
def test_a_bad_pin_is_an_error_naming_its_key(tmp_path: Path, entry: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, [entry])
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_check_prints_pins_and_offline_upstreams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pullthrough.cli import main

    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"version": 0.1, "mirror": {
        "pins": [{"upstream": "docker.io", "repository": "alpine", "tags": ["3.*"]}],
        "upstreams": [{"name": "ghcr.io", "remoteurl": "https://ghcr.io", "offline": True}],
    }}))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mirror.pins: docker.io/library/alpine:3.* is kept for good" in out
    assert "upstream ghcr.io starts offline" in out
    assert "upstream docker.io starts offline" not in out
