"""``offline`` on an upstream: a boolean, kept per upstream, an error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pullthrough.config import ConfigError, load


def test_offline_must_be_a_boolean_and_is_kept_per_upstream(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    doc = {"version": 0.1, "proxy": {"offline": True},
           "mirror": {"upstreams": [{"name": "ghcr.io", "remoteurl": "https://ghcr.io"}]}}
    path.write_text(yaml.safe_dump(doc))
    offline = {u.name: u.offline for u in load(path, environ={}).upstreams}
    assert offline == {"docker.io": True, "ghcr.io": False}
    doc["mirror"]["upstreams"][0]["offline"] = "sometimes"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load(path, environ={})
    assert str(err.value).startswith("mirror.upstreams[0].offline:"), str(err.value)
