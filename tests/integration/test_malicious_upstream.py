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
from tests.support.scripted import Answer, Scripted

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


@pytest.mark.parametrize(
    "answer",
    [
        {"Content-Type": "text/html", "Content-Length": "17"},  # a portal's page
        {"Content-Length": "17", "Docker-Content-Digest": "sha256:" + "ee" * 32},  # another blob
    ],
)
def test_a_head_answer_about_something_else_is_not_passed_on(
    mirror_factory, answer: dict[str, str]
) -> None:
    """A HEAD of an uncached blob answered 200 by a page or for another digest: the client
    is not told the blob exists with that size (the soak's HTML-200 fault found this)."""
    digest = "sha256:" + "ab" * 32

    def script(method: str, path: str) -> Answer:
        if path.split("?", 1)[0] == "/v2/":
            return 200, {}, b""
        if method == "HEAD" and path.endswith(f"/blobs/{digest}"):
            return 200, answer, b""
        return 404, {"Content-Type": "application/json"}, b'{"errors":[]}'

    with Scripted(script) as upstream:
        mirror = mirror_factory(upstream.url)
        resp = http_request("HEAD", f"{mirror.url}/v2/team/app/blobs/{digest}", timeout=30)
        assert [r.method for r in upstream.requests if "/blobs/" in r.path] == ["HEAD"]
    assert resp.status == 502, resp.headers
    assert resp.headers.get("Content-Length") != "17"
