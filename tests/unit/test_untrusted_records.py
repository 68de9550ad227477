"""Values read back from Redis in cluster mode are untrusted: what they may become."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pullthrough.cluster.errors import error_from_json
from pullthrough.reference import parse_digest
from pullthrough.store.blobs import BlobStore

FILE_ID = "0123456789abcdef0123456789abcdef"


def test_a_shared_error_carries_no_header_but_retry_after() -> None:
    error = error_from_json(
        {
            "code": "TOOMANYREQUESTS",
            "message": "slow down\r\nSet-Cookie: x=1",
            "headers": {"Retry-After": "7", "Set-Cookie": "pwned=1", "Location": "/"},
        }
    )
    assert error.headers == {"Retry-After": "7"}
    assert "\n" not in error.message and "\r" not in error.message
    assert (
        error_from_json({"code": "UNAVAILABLE", "headers": {"Retry-After": "soon"}}).headers == {}
    )


def test_nothing_outside_tmp_is_ever_a_temp_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "root")
    digest = parse_digest("sha256:" + "ab" * 32)
    assert store.temp_path(digest, FILE_ID).parent == store.tmp_dir
    for hostile in ("../../etc/passwd", "/etc/passwd", FILE_ID.upper(), FILE_ID + "/x", ""):
        with pytest.raises(ValueError):
            store.temp_path(digest, hostile)
    assert os.path.dirname(store.temp_path(digest)) == str(store.tmp_dir)
