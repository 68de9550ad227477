"""Whatever Redis holds is untrusted input: records no replica would write (a claim or a
partial download naming a file outside the store, a ``..`` path, a size that is no size, a
node name that would forge a log line, an outcome that is not JSON) are ignored with a
warning. The replicas still serve the right bytes (fetching them themselves), and no file
outside the storage root is read into a response, changed or deleted.

The hostile records are written where this version reads them (``fetch|U|D``, per
upstream, naming the temp file by ``file``) and where the version before it did
(``fetch|D``, by ``path``), so that each test shows what the records did there."""

from __future__ import annotations

import hashlib
import http.client
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.cluster.conftest import ReplicaFactory
from tests.cluster.redis_server import RedisServer
from tests.support import KiB, MiB
from tests.support.images import MANIFEST_ACCEPT, ImageFactory, PushedImage
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]

UPSTREAM = "docker.io"
MARKER = b"OUTSIDE-THE-STORE:"
# Long enough for a replica to answer; short enough that a replica stuck on a hostile
# record (as before records were checked) fails the test soon.
CLIENT_TIMEOUT = 15.0
RECORD_TTL_MS = 60_000
FILE_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class Setup:
    group: list[MirrorProcess]
    db: redis.Redis
    image: PushedImage
    layer: str
    blob: bytes
    root: Path  # the shared storage root
    secret: Path  # a file outside it


@pytest.fixture
def setup(
    image_factory: ImageFactory,
    replicas: ReplicaFactory,
    upstream_proxy: RecordingProxy,
    redis_server: RedisServer,
    tmp_path: Path,
) -> Setup:
    image = image_factory("library/hostile", layers=(1 * MiB,))
    layer = image.source.layer_digests[0]
    group = replicas(upstream_proxy.url, n=2)
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(MARKER * (4 * KiB // len(MARKER)))
    db = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    return Setup(
        group,
        db,
        image,
        layer,
        image.source.blob_file(layer).read_bytes(),
        group[0].root,
        secret,
    )


def _write(db: redis.Redis, kind: str, digest: str, fields: dict[str, str]) -> None:
    """``fields`` as the ``kind`` record (fetch or partial) of ``digest``, under the key
    of this version and of the one before it."""
    for name in (f"pullthrough:{kind}|{UPSTREAM}|{digest}", f"pullthrough:{kind}|{digest}"):
        db.delete(name)
        db.hset(name, mapping=fields)
        db.pexpire(name, RECORD_TTL_MS)


def _fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


def _get(host: str, repo: str, digest: str) -> tuple[int | None, bytes, str]:
    """(status, every body byte that arrived, the error that ended the transfer, if any)
    of a blob GET: bytes that arrive before a transfer breaks or stalls count too."""
    conn = http.client.HTTPConnection(host, timeout=CLIENT_TIMEOUT)
    status: int | None = None
    body = bytearray()
    error = ""
    try:
        conn.request("GET", f"/v2/{repo}/blobs/{digest}")
        resp = conn.getresponse()
        status = resp.status
        while chunk := resp.read1(64 * KiB):
            body += chunk
    except Exception as exc:  # recorded, asserted on below
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return status, bytes(body), error


def _served_right(s: Setup, *forbidden: bytes) -> None:
    """Both replicas answer the blob with exactly its bytes, none of ``forbidden``."""
    for replica in s.group:
        status, body, error = _get(replica.host, s.image.repo, s.layer)
        for text in (MARKER, *forbidden):
            assert text not in body, f"{replica.host} served bytes from outside the store"
        assert (status, error) == (200, "")
        assert hashlib.sha256(body).hexdigest() == s.layer.removeprefix("sha256:")


def _warned(s: Setup) -> None:
    lines = [line for r in s.group for line in r.log_text().splitlines()]
    assert any(" WARNING " in f" {line} " and "in redis" in line for line in lines), (
        "no warning about the record"
    )


def _outside_paths(s: Setup) -> dict[str, tuple[str, str]]:
    """(path the version before this read, file id this one reads) per way of naming
    the file outside the store."""
    dotdot = ["..", "..", s.secret.parent.name, s.secret.name]
    return {
        "absolute": (str(s.secret), str(s.secret)),
        "dotdot": (str(s.root.joinpath("tmp", *dotdot)), "/".join(dotdot)),
    }


@pytest.mark.parametrize("named", ["absolute", "dotdot", "etc-passwd"])
def test_a_running_claim_naming_a_file_outside_the_store_is_not_followed(
    setup: Setup, named: str
) -> None:
    s = setup
    if named == "etc-passwd":
        outside = Path("/etc/passwd")
        path = file = str(outside)
    else:
        outside = s.secret
        path, file = _outside_paths(s)[named]
    before = _fingerprint(outside)
    _write(
        s.db,
        "fetch",
        s.layer,
        {
            "owner": "http://evil.example#0123456789ab",
            "node": "http://evil.example",
            "path": path,
            "file": file,
            "state": "running",
            "size": str(before[1]),
            "started": "1",
            "upstream": UPSTREAM,
            "repo": s.image.repo,
        },
    )
    _served_right(s, outside.read_bytes()[:64])
    assert _fingerprint(outside) == before
    _warned(s)


@pytest.mark.parametrize("named", ["absolute", "dotdot"])
def test_a_partial_download_naming_a_file_outside_the_store_is_neither_read_changed_nor_deleted(
    setup: Setup, named: str
) -> None:
    s = setup
    path, file = _outside_paths(s)[named]
    before = _fingerprint(s.secret)
    _write(
        s.db,
        "partial",
        s.layer,
        {"path": path, "file": file, "size": str(len(s.blob)), "repo": s.image.repo},
    )
    _served_right(s)
    assert s.secret.exists(), "the file outside the store was deleted"
    assert _fingerprint(s.secret) == before
    assert [p.name for p in s.secret.parent.iterdir()] == [s.secret.name]
    _warned(s)


def _inside(s: Setup) -> str:
    """The temp file FILE_ID names, as the version before this one recorded paths."""
    return str(s.root / "tmp" / f"{s.layer.replace(':', '-')}.{FILE_ID}")


@pytest.mark.parametrize(
    ("kind", "garbage"),
    [
        # A partial download of 10^20 bytes: the client was promised that many.
        ("partial", {"size": "99999999999999999999"}),
        # A running claim whose size is no number, and one whose owner's name would
        # forge a log line: followed (for ever) before.
        ("fetch", {"size": "-1"}),
        ("fetch", {"node": "http://x\nINFO pullthrough.cluster.follow: forged line"}),
    ],
    ids=["huge-size", "negative-size", "forging-node-name"],
)
def test_a_record_with_garbage_fields_is_ignored(
    setup: Setup, kind: str, garbage: dict[str, str]
) -> None:
    s = setup
    fields = {"path": _inside(s), "file": FILE_ID, "repo": s.image.repo}
    if kind == "fetch":
        fields |= {
            "owner": "http://evil.example#0123456789ab",
            "node": "http://evil.example",
            "state": "running",
            "size": str(len(s.blob)),
            "started": "",
            "upstream": UPSTREAM,
        }
    _write(s.db, kind, s.layer, fields | garbage)
    _served_right(s)
    _warned(s)
    for replica in s.group:
        assert "\nINFO pullthrough.cluster.follow: forged line" not in replica.log_text()


def test_a_flight_outcome_that_is_not_json_is_ignored(setup: Setup) -> None:
    s = setup
    first, second = s.group

    def manifest(replica: MirrorProcess) -> tuple[int, str]:
        resp = http_request(
            "GET",
            f"{replica.url}/v2/{s.image.repo}/manifests/{s.image.tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=CLIENT_TIMEOUT,
        )
        return resp.status, "sha256:" + hashlib.sha256(resp.body).hexdigest()

    assert manifest(first) == (200, s.image.digest)
    outcomes = [
        name
        for name in s.db.scan_iter("pullthrough:flight|*")
        if not name.endswith(("|lock", "|fresh"))
    ]
    assert outcomes, "no flight outcome to spoil"
    for name in outcomes:
        s.db.set(name, "not json {", px=RECORD_TTL_MS)
    assert manifest(second) == (200, s.image.digest)
    _warned(s)


def test_a_cached_tag_record_that_is_no_record_is_ignored(
    image_factory: ImageFactory,
    replicas: ReplicaFactory,
    upstream_proxy: RecordingProxy,
    redis_server: RedisServer,
) -> None:
    image = image_factory("library/hostile-tag")
    group = replicas(upstream_proxy.url, n=2, config={"mirror": {"tag_freshness": "1m"}})
    db = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)

    def manifest(replica: MirrorProcess) -> tuple[int, str]:
        resp = http_request(
            "GET",
            f"{replica.url}/v2/{image.repo}/manifests/{image.tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=CLIENT_TIMEOUT,
        )
        return resp.status, "sha256:" + hashlib.sha256(resp.body).hexdigest()

    assert manifest(group[0]) == (200, image.digest)
    name = f"pullthrough:tag|{UPSTREAM}|{image.repo}|{image.tag}"
    cached = db.hgetall(name)
    assert cached, "the tag was not cached"
    db.hset(name, mapping={media_type: "../../etc/passwd not-a-time" for media_type in cached})
    assert manifest(group[1]) == (200, image.digest)
    assert any(
        " WARNING " in line and "in redis" in line
        for replica in group
        for line in replica.log_text().splitlines()
    )
