"""deploy/grafana/pullthrough.json cannot drift from the code: every metric its queries
name is one a live mirror exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.conftest import MirrorFactory
from tests.support.images import ImageSet, pull_dir
from tests.support.net import free_port, http_request
from tests.support.registry import Registry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "pullthrough.json"
# The series each ``# TYPE`` line stands for (a counter's TYPE name already ends in _total).
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def _exposed(text: str) -> set[str]:
    """Every series name the exposition can hold, from its ``# TYPE`` lines (present for
    every registered metric, labelled ones without samples yet included)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def test_every_metric_the_dashboard_queries_is_exposed(
    mirror_factory: MirrorFactory, upstream: Registry, images: ImageSet, tmp_path: Path
) -> None:
    port = free_port()
    debug = {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}
    mirror = mirror_factory(
        upstream.url, config={"http": {"debug": debug}, "mirror": {"maxsize": "1GiB"}}
    )
    pull_dir(f"{mirror.host}/{images.oci_small.repo}:v1", tmp_path / "copy")
    text = http_request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    exposed = _exposed(text)

    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bpullthrough_[a-z_]+\b", target["expr"])
    }
    assert len(queried) >= 10
    assert sorted(queried - exposed) == []
    # The ones a pull has produced by now carry samples too.
    for name in ("pullthrough_cache_total", "pullthrough_request_duration_seconds_bucket"):
        assert re.search(rf"^{name}\{{", text, re.M), name
