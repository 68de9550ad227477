"""A malicious upstream is refused with a clear error and bounded memory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.evil import EvilUpstream
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request

pytestmark = pytest.mark.integration

MAX_RSS_MIB = 150  # the whole mirror process, after all of it


@pytest.fixture
def evil_mirror(mirror_factory) -> Iterator[tuple[EvilUpstream, MirrorProcess]]:
    evil = EvilUpstream().start()
    mirror = mirror_factory(evil.url, config={"mirror": {"upstream_read_timeout": "5s"}})
    yield evil, mirror
    evil.stop()


def _rss_mib(pid: int) -> float:
    """Peak resident memory of the process so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/v2/huge/app/manifests/v1", 502, "over 4 MiB"),
        ("/v2/wide/app/manifests/v1", 502, "over 4 MiB"),
        ("/v2/loop/app/blobs/sha256:" + "a" * 64, 502, "redirects"),
        ("/v2/file/app/blobs/sha256:" + "a" * 64, 502, "non-HTTP"),
        ("/v2/ftp/app/blobs/sha256:" + "a" * 64, 502, "non-HTTP"),
        ("/v2/tokenbomb/app/manifests/v1", 502, "more than"),
    ],
)
def test_abuse_is_refused_clearly(evil_mirror, path: str, status: int, words: str) -> None:
    evil, mirror = evil_mirror
    began = time.monotonic()
    resp = http_request("GET", f"{mirror.url}{path}", timeout=30)
    assert resp.status == status, resp.body[:300]
    message = json.loads(resp.body)["errors"][0]["message"]
    assert words in message
    assert time.monotonic() - began < 10
    assert mirror.stored_files() == {}
    assert mirror.proc is not None
    assert _rss_mib(mirror.proc.pid) < MAX_RSS_MIB
