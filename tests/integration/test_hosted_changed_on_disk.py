"""A hosted blob whose file changed on disk since it was verified is never served as a
success, as for mirrored blobs: the transfer fails, the file goes (there is no upstream to
fetch it from: the registry says it does not hold it, and a push puts it back)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.integration.conftest import MirrorFactory
from tests.integration.test_changed_on_disk import _flip_byte
from tests.integration.test_hosted import PUSHERS
from tests.support import MiB
from tests.support.mirror import MirrorProcess
from tests.support.net import get_expecting_a_failed_transfer, http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration


def _push(mirror: MirrorProcess, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{mirror.url}/v2/acme/app/blobs/uploads/?digest={digest}"
    assert http_request("POST", url, data=data).status == 201
    return digest


@pytest.mark.parametrize(
    ("restore_mtime", "ranged"),
    [(False, False), (True, False), (False, True)],
    ids=["flipped", "flipped-mtime-restored", "flipped-range"],
)
def test_a_hosted_blob_changed_on_disk_is_never_served(
    mirror_factory: MirrorFactory,
    upstream_proxy: RecordingProxy,
    restore_mtime: bool,
    ranged: bool,
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config=PUSHERS)
    data = bytes(range(256)) * (3 * MiB // 256)
    digest = _push(mirror, data)
    path = f"/v2/acme/app/blobs/{digest}"
    assert http_request("GET", f"{mirror.url}{path}").body == data  # as pushed
    _flip_byte(mirror.stored_files()[digest], 2 * MiB, restore_mtime=restore_mtime)

    if ranged:
        # Part of a file not known to be as verified: hashed whole before any header.
        resp = http_request("GET", f"{mirror.url}{path}", headers={"Range": "bytes=0-99"})
        assert resp.status == 404
        assert json.loads(resp.body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    else:
        get_expecting_a_failed_transfer(mirror.host, path)
    for method in ("HEAD", "GET"):
        resp = http_request(method, f"{mirror.url}{path}")
        assert resp.status == 404  # removed: the registry holds no such bytes any more
    assert digest not in mirror.stored_files()
    assert "does not match its digest" in mirror.log_text()

    _push(mirror, data)  # the client pushes again (its HEAD said the blob was missing)
    assert http_request("GET", f"{mirror.url}{path}").body == data
    assert upstream_proxy.requests() == []
