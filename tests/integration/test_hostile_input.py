"""Hostile input tried by machine: whatever a client puts in the name, tag, digest, Range,
``?ns=``, ``n`` or ``last``, the mirror answers with a 4xx OCI error or a success, never a
5xx or a traceback, and never touches a file outside its storage root."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mirror import MirrorProcess
from tests.support.net import free_port

pytestmark = pytest.mark.integration

EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)

# Path-ish text: the characters that matter for traversal and parsing, plus anything.
_tricky = st.sampled_from(
    ["..", "/", "%2e", "%2f", "%00", ":", "@", "sha256:", "\\", "~", " ", "%", "..%2f", "//"]
)
_segment = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    _tricky,
    st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
)
_path_text = st.lists(_segment, min_size=1, max_size=6).map("".join)


@pytest.fixture(scope="module")
def dead_upstream_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorProcess]:
    """A mirror whose upstream refuses connections: every miss fails fast, cleanly."""
    mirror = MirrorProcess(
        tmp_path_factory.mktemp("hostile"), f"http://127.0.0.1:{free_port()}"
    ).start()
    yield mirror
    mirror.stop()


def _raw(
    mirror: MirrorProcess, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(mirror.host, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 400 and not (resp.getheader("Content-Type") or "").startswith(
            "application/json"
        ):
            return 400, b""  # malformed HTTP, refused before any route
        return resp.status, body
    finally:
        conn.close()


def _assert_clean(mirror: MirrorProcess, status: int, body: bytes) -> None:
    assert status < 500 or status == 503, (status, body[:300])
    if status >= 400 and body:
        errors = json.loads(body)["errors"]
        assert errors[0]["code"] and errors[0]["message"]


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="/:%@~")


@EXAMPLES
@given(name=_path_text, ref=_path_text, kind=st.sampled_from(["manifests", "blobs", "tags"]))
def test_any_name_and_reference_get_a_clean_answer(
    dead_upstream_mirror: MirrorProcess, name: str, ref: str, kind: str
) -> None:
    target = (
        f"/v2/{_quote(name)}/tags/list"
        if kind == "tags"
        else f"/v2/{_quote(name)}/{kind}/{_quote(ref)}"
    )
    for method in ("GET", "HEAD"):
        status, body = _raw(dead_upstream_mirror, method, target)
        _assert_clean(dead_upstream_mirror, status, body if method == "GET" else b"")


@EXAMPLES
@given(
    ns=st.text(max_size=60),
    n=st.one_of(st.text(max_size=25), st.integers(-(10**30), 10**30).map(str)),
    last=st.text(max_size=600),
)
def test_any_query_gets_a_clean_answer(
    dead_upstream_mirror: MirrorProcess, ns: str, n: str, last: str
) -> None:
    query = urllib.parse.urlencode({"ns": ns, "n": n, "last": last})
    for target in (
        f"/v2/_catalog?{query}",
        f"/v2/library/x/tags/list?{query}",
        f"/v2/library/x/manifests/latest?{query}",
    ):
        status, body = _raw(dead_upstream_mirror, "GET", target)
        _assert_clean(dead_upstream_mirror, status, body)


@EXAMPLES
@given(
    value=st.one_of(
        st.text(max_size=60),
        st.tuples(st.integers(-(10**25), 10**25), st.integers(-(10**25), 10**25)).map(
            lambda p: f"bytes={p[0]}-{p[1]}"
        ),
        st.integers(-(10**25), 10**25).map(lambda v: f"bytes={v}-"),
    )
)
def test_any_range_gets_a_clean_answer(dead_upstream_mirror: MirrorProcess, value: str) -> None:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return  # not sendable as an HTTP header
    if any(c in value for c in "\r\n\0"):
        return
    status, body = _raw(
        dead_upstream_mirror, "GET", f"/v2/library/x/blobs/sha256:{'a' * 64}", {"Range": value}
    )
    _assert_clean(dead_upstream_mirror, status, body)


def test_after_the_barrage_nothing_outside_the_root_and_no_traceback(
    dead_upstream_mirror: MirrorProcess,
) -> None:
    workdir: Path = dead_upstream_mirror.workdir
    assert {p.name for p in workdir.iterdir()} <= {"data", "config.yml", "mirror.log"}
    log = dead_upstream_mirror.log_text()
    assert "Traceback" not in log.replace("Received HTTPS traffic", "")
    assert "unexpected error" not in log
