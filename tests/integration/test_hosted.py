"""Hosted repositories: pushes beside the cache, checked, kept and refused as a user sees it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.integration.conftest import MirrorFactory
from tests.support import KiB
from tests.support.hosted import OCI_MANIFEST, digest_of, error_code, image_manifest
from tests.support.images import make_image, pull_dir, push
from tests.support.mirror import MirrorProcess
from tests.support.net import http_request
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

PUSHERS: dict[str, Any] = {
    "storage": {"delete": {"enabled": True}},
    "mirror": {
        "hosted": {"repositories": ["acme"], "max_uploads_per_client": 5},
        "access": [
            {"repositories": ["**"]},
            {"repositories": ["acme/**"], "actions": ["pull", "push", "delete"]},
        ],
    },
}




def _session(mirror: MirrorProcess, repo: str) -> str:
    resp = http_request("POST", f"{mirror.url}/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, resp.body
    location = resp.header("Location") or ""
    return f"{mirror.url}{location}"


def _push_blob(
    mirror: MirrorProcess, repo: str, data: bytes, auth: tuple[str, str] | None = None
) -> str:
    digest = digest_of(data)
    resp = http_request(
        "POST", f"{mirror.url}/v2/{repo}/blobs/uploads/?digest={digest}", data=data, auth=auth
    )
    assert resp.status == 201, resp.body
    return digest




@pytest.fixture
def hosted(mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy) -> MirrorProcess:
    return mirror_factory(upstream_proxy.url, config=PUSHERS)


def test_anonymous_push_is_refused_unless_a_rule_grants_it(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(
        upstream_proxy.url, config={"mirror": {"hosted": {"repositories": ["acme"]}}}
    )
    data = b"not welcome"
    for method, path in (
        ("POST", f"/v2/acme/app/blobs/uploads/?digest={digest_of(data)}"),
        ("PUT", "/v2/acme/app/manifests/v1"),
    ):
        resp = http_request(method, f"{mirror.url}{path}", data=data)
        assert resp.status == 403 and error_code(resp) == "DENIED"
    assert not (mirror.root / "blobs").exists() or mirror.stored_files() == {}
    assert upstream_proxy.requests() == []


def test_chunks_out_of_order_are_416_and_the_session_keeps_its_bytes(
    hosted: MirrorProcess,
) -> None:
    data = bytes(range(256)) * 64
    url = _session(hosted, "acme/app")
    first = http_request("PATCH", url, data=data[:1000], headers={"Content-Range": "0-999"})
    assert first.status == 202 and first.header("Range") == "0-999"
    url = f"{hosted.url}{first.header('Location')}"
    for bad in ("500-1499", "1001-1500"):  # an overlap, a gap
        resp = http_request("PATCH", url, data=data[1000:2000], headers={"Content-Range": bad})
        assert resp.status == 416 and error_code(resp) == "RANGE_INVALID"
    status = http_request("GET", url)
    assert status.status == 204 and status.header("Range") == "0-999"
    done = http_request(
        "PUT",
        f"{url}?digest={digest_of(data)}",
        data=data[1000:],
        headers={"Content-Range": f"1000-{len(data) - 1}"},
    )
    assert done.status == 201
    got = http_request("GET", f"{hosted.url}/v2/acme/app/blobs/{digest_of(data)}")
    assert got.status == 200 and got.body == data


def test_a_digest_that_does_not_match_is_400_and_nothing_is_stored(
    hosted: MirrorProcess,
) -> None:
    data = b"the bytes that arrive"
    claimed = digest_of(b"the bytes the client meant")
    resp = http_request(
        "POST", f"{hosted.url}/v2/acme/app/blobs/uploads/?digest={claimed}", data=data
    )
    assert resp.status == 400 and error_code(resp) == "DIGEST_INVALID"
    url = _session(hosted, "acme/app")
    resp = http_request(
        "PUT", f"{url}&digest={claimed}" if "?" in url else f"{url}?digest={claimed}", data=data
    )
    assert resp.status == 400 and error_code(resp) == "DIGEST_INVALID"
    assert hosted.stored_files() == {}
    assert list((hosted.root / "uploads").iterdir()) == []
    for digest in (claimed, digest_of(data)):
        assert http_request("HEAD", f"{hosted.url}/v2/acme/app/blobs/{digest}").status == 404


def test_manifest_put_is_checked(hosted: MirrorProcess) -> None:
    config = _push_blob(hosted, "acme/app", b"{}")
    missing = digest_of(b"a layer never pushed")
    url = f"{hosted.url}/v2/acme/app/manifests/v1"
    ct = {"Content-Type": OCI_MANIFEST}

    refs_missing = image_manifest(config, 2, [(missing, 20)])
    resp = http_request("PUT", url, data=refs_missing, headers=ct)
    assert resp.status == 400 and error_code(resp) == "MANIFEST_BLOB_UNKNOWN"

    odd_type = json.dumps({"schemaVersion": 2, "mediaType": "text/html"}).encode()
    resp = http_request("PUT", url, data=odd_type, headers={"Content-Type": "text/html"})
    assert resp.status == 400 and error_code(resp) == "MANIFEST_INVALID"

    resp = http_request("PUT", url, data=b"{not json", headers=ct)
    assert resp.status == 400 and error_code(resp) == "MANIFEST_INVALID"

    good = image_manifest(config, 2, [])
    resp = http_request(
        "PUT", f"{hosted.url}/v2/acme/app/manifests/{digest_of(b'x')}", data=good, headers=ct
    )
    assert resp.status == 400 and error_code(resp) == "DIGEST_INVALID"

    huge = good + b" " * (4 * 1024 * 1024)
    resp = http_request("PUT", url, data=huge, headers=ct, timeout=30)
    assert resp.status == 413

    # A blob another repository holds is not this one's: pushed content is per repository.
    other = _push_blob(hosted, "acme/other", b"layer of another repository")
    resp = http_request("PUT", url, data=image_manifest(config, 2, [(other, 27)]), headers=ct)
    assert resp.status == 400 and error_code(resp) == "MANIFEST_BLOB_UNKNOWN"
    assert http_request("GET", f"{hosted.url}/v2/acme/app/blobs/{other}").status == 404

    assert http_request("GET", url).status == 404  # nothing of the above was stored
    resp = http_request("PUT", url, data=good, headers=ct)
    assert resp.status == 201 and resp.header("Docker-Content-Digest") == digest_of(good)
    got = http_request("GET", url, headers={"Accept": OCI_MANIFEST})
    assert got.body == good and got.header("Content-Type") == OCI_MANIFEST


def test_deletes_need_storage_delete_enabled(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    config = json.loads(json.dumps(PUSHERS))
    config["storage"]["delete"]["enabled"] = False
    mirror = mirror_factory(upstream_proxy.url, config=config)
    blob = _push_blob(mirror, "acme/app", b"kept")
    resp = http_request("DELETE", f"{mirror.url}/v2/acme/app/blobs/{blob}")
    assert resp.status == 405 and error_code(resp) == "UNSUPPORTED"
    assert http_request("GET", f"{mirror.url}/v2/acme/app/blobs/{blob}").body == b"kept"


def test_mount_needs_the_right_to_read_the_source(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    users = tmp_path / "htpasswd"
    users.write_text(
        "".join(
            f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=6)).decode()}\n"
            for u, p in (("alice", "a-pw"), ("bob", "b-pw"))
        )
    )
    config: dict[str, Any] = {
        "auth": {"htpasswd": {"realm": "test", "path": str(users)}},
        "mirror": {
            "hosted": {"repositories": ["acme", "secret"]},
            "access": [
                {"repositories": ["acme/**"], "users": ["*"], "actions": ["pull", "push"]},
                {"repositories": ["secret/**"], "users": ["alice"], "actions": ["pull", "push"]},
            ],
        },
    }
    mirror = mirror_factory(upstream_proxy.url, config=config)
    alice, bob = ("alice", "a-pw"), ("bob", "b-pw")
    hidden = _push_blob(mirror, "secret/vault", b"do not mount me", auth=alice)
    shared = _push_blob(mirror, "acme/base", b"mount me", auth=alice)
    base = f"{mirror.url}/v2/acme/app/blobs"
    refused = http_request("POST", f"{base}/uploads/?mount={hidden}&from=secret/vault", auth=bob)
    assert refused.status == 202  # a plain upload session: nothing was linked
    assert http_request("HEAD", f"{base}/{hidden}", auth=bob).status == 404
    mounted = http_request("POST", f"{base}/uploads/?mount={shared}&from=acme/base", auth=bob)
    assert mounted.status == 201
    assert http_request("GET", f"{base}/{shared}", auth=bob).body == b"mount me"
    # Alice may read the source: her mount links it.
    assert (
        http_request("POST", f"{base}/uploads/?mount={hidden}&from=secret/vault", auth=alice).status
        == 201
    )


def test_a_chunked_upload_resumes_after_a_restart(hosted: MirrorProcess) -> None:
    data = b"0123456789" * 1000
    url = _session(hosted, "acme/app")
    first = http_request("PATCH", url, data=data[:4000], headers={"Content-Range": "0-3999"})
    assert first.status == 202
    hosted.stop()
    hosted.start()
    url = f"{hosted.url}{first.header('Location')}"
    assert http_request("GET", url).header("Range") == "0-3999"
    done = http_request("PUT", f"{url}?digest={digest_of(data)}", data=data[4000:])
    assert done.status == 201
    assert http_request("GET", f"{hosted.url}/v2/acme/app/blobs/{digest_of(data)}").body == data


def test_upload_sessions_per_client_are_capped(hosted: MirrorProcess) -> None:
    urls = [_session(hosted, "acme/app") for _ in range(5)]
    over = http_request("POST", f"{hosted.url}/v2/acme/app/blobs/uploads/")
    assert over.status == 429 and error_code(over) == "TOOMANYREQUESTS"
    assert http_request("DELETE", urls[0]).status == 204
    assert http_request("GET", urls[0]).status == 404
    _session(hosted, "acme/app")  # a cancelled session gives its place back


def test_an_idle_upload_session_expires_and_an_active_one_does_not(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    config = json.loads(json.dumps(PUSHERS))
    config["mirror"]["hosted"]["upload_idle"] = "2s"
    mirror = mirror_factory(upstream_proxy.url, config=config)
    idle = _session(mirror, "acme/app")
    busy = _session(mirror, "acme/app")
    sent = 0
    deadline = time.monotonic() + 20
    while http_request("GET", idle).status != 404:  # bounded: the pass runs every second
        assert time.monotonic() < deadline, "an idle session was never removed"
        chunk = b"x" * 100  # the other session keeps being written to
        got = http_request("PATCH", busy, data=chunk,
                           headers={"Content-Range": f"{sent}-{sent + len(chunk) - 1}"})
        assert got.status == 202, got.body
        sent += len(chunk)
        time.sleep(0.5)
    gone = http_request("PATCH", idle, data=b"late", headers={"Content-Range": "0-3"})
    assert gone.status == 404 and error_code(gone) == "BLOB_UPLOAD_UNKNOWN"
    assert http_request("GET", busy).header("Range") == f"0-{sent - 1}"
    left = {p.stem for p in (mirror.root / "uploads").iterdir()}
    assert left == {busy.rsplit("/", 1)[1]}, left  # the idle session's files are gone


def test_hosted_content_is_never_evicted(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    config = json.loads(json.dumps(PUSHERS))
    config["mirror"].update({"maxsize": "1KiB", "gc_interval": "0.2s"})
    config["proxy"] = {"ttl": "1s"}
    mirror = mirror_factory(upstream_proxy.url, config=config)
    data = b"x" * (64 * KiB)
    blob = _push_blob(mirror, "acme/app", data)
    mirror.stop()
    time.sleep(1.2)  # past the TTL before the restarted server's first sweep
    mirror.start()  # what is kept comes from hosted.db, before that sweep
    time.sleep(1.5)  # several sweeps over a store 64 times maxsize
    assert http_request("GET", f"{mirror.url}/v2/acme/app/blobs/{blob}").body == data


def test_skopeo_pushes_to_a_hosted_repository_and_pulls_back(
    hosted: MirrorProcess, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "layout", [200 * KiB, 50 * KiB], "hosted-skopeo", ref="v1")
    digest = push(image, hosted.host, "acme/app", "v1")
    assert digest == image.manifest_digest
    pulled = pull_dir(f"{hosted.host}/acme/app:v1", tmp_path / "pulled")
    assert pulled is not None
    tags = http_request("GET", f"{hosted.url}/v2/acme/app/tags/list")
    assert json.loads(tags.body) == {"name": "acme/app", "tags": ["v1"]}
    assert upstream_proxy.requests() == []  # a hosted name never reaches the upstream


def test_pullthrough_gc_keeps_hosted_content(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> None:
    """The operator's gc, past every TTL and far over maxsize, removes no pushed byte."""
    from tests.integration.test_commands import ok, pullthrough

    config = json.loads(json.dumps(PUSHERS))
    config["mirror"]["maxsize"] = "1KiB"
    config["proxy"] = {"ttl": "1s"}
    mirror = mirror_factory(upstream_proxy.url, config=config)
    data = b"y" * (32 * KiB)
    blob = _push_blob(mirror, "acme/app", data)
    mirror.stop()
    time.sleep(1.5)
    out = ok(pullthrough("gc", str(mirror.config_path)))
    assert "removed 0 objects" in out
    assert blob in mirror.stored_files()
    mirror.start()
    got = http_request("GET", f"{mirror.url}/v2/acme/app/blobs/{blob}")
    assert got.body == data, got.body[:300]


def test_token_scopes_decide_push_on_the_hosted_name(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    from tests.support.tokens import TokenIssuer

    issuer = TokenIssuer(service="pullthrough-mirror", issuer="mirror-issuer", root=tmp_path / "i")
    issuer.start()
    try:
        auth = {
            "token": {
                "realm": issuer.url,
                "service": issuer.service,
                "issuer": issuer.issuer,
                "rootcertbundle": str(issuer.cert_path),
            }
        }
        mirror = mirror_factory(
            upstream_proxy.url,
            config={"auth": auth, "mirror": {"hosted": {"repositories": ["acme"]}}},
        )
        data = b"pushed with a token"
        url = f"{mirror.url}/v2/acme/app/blobs/uploads/?digest={digest_of(data)}"

        def bearer(*scopes: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {issuer.issue_token(scopes, user='ci')}"}

        pull_only = http_request("POST", url, data=data, headers=bearer("repository:acme/app:pull"))
        assert pull_only.status == 401
        challenge = pull_only.header("WWW-Authenticate") or ""
        assert 'scope="repository:acme/app:pull,push"' in challenge
        other_repo = bearer("repository:acme/other:pull,push")
        assert http_request("POST", url, data=data, headers=other_repo).status == 401
        granted = http_request(
            "POST", url, data=data, headers=bearer("repository:acme/app:pull,push")
        )
        assert granted.status == 201
        blob = f"{mirror.url}/v2/acme/app/blobs/{digest_of(data)}"
        assert http_request("GET", blob, headers=bearer("repository:acme/app:pull")).body == data
    finally:
        issuer.stop()


def test_a_corrupted_hosted_manifest_is_never_served(hosted: MirrorProcess) -> None:
    config = _push_blob(hosted, "acme/app", b"{}")
    body = image_manifest(config, 2, [])
    url = f"{hosted.url}/v2/acme/app/manifests/v1"
    assert http_request("PUT", url, data=body, headers={"Content-Type": OCI_MANIFEST}).status == 201
    hosted.stored_files()[digest_of(body)].write_bytes(body.replace(b"2", b"3"))
    resp = http_request("GET", url)
    assert resp.status == 404 and error_code(resp) == "MANIFEST_UNKNOWN"


def test_referrers_list_manifests_with_a_subject_filtered_by_artifact_type(
    hosted: MirrorProcess,
) -> None:
    config = _push_blob(hosted, "acme/app", b"{}")
    image = image_manifest(config, 2, [])
    base = f"{hosted.url}/v2/acme/app"
    ct = {"Content-Type": OCI_MANIFEST}
    assert http_request("PUT", f"{base}/manifests/v1", data=image, headers=ct).status == 201
    subject = {"mediaType": OCI_MANIFEST, "digest": digest_of(image), "size": len(image)}
    pushed = {}
    for kind in ("application/vnd.example.sbom", "application/vnd.example.signature"):
        doc = json.loads(image)
        doc.update({"artifactType": kind, "subject": subject, "annotations": {"k": kind}})
        body = json.dumps(doc).encode()
        resp = http_request("PUT", f"{base}/manifests/{digest_of(body)}", data=body, headers=ct)
        assert resp.status == 201 and resp.header("OCI-Subject") == digest_of(image)
        pushed[kind] = digest_of(body)

    every = http_request("GET", f"{base}/referrers/{digest_of(image)}")
    assert every.status == 200 and every.header("OCI-Filters-Applied") is None
    listed = json.loads(every.body)
    assert listed["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert {m["digest"] for m in listed["manifests"]} == set(pushed.values())
    sboms = http_request(
        "GET", f"{base}/referrers/{digest_of(image)}?artifactType=application/vnd.example.sbom"
    )
    assert sboms.header("OCI-Filters-Applied") == "artifactType"
    assert [m["digest"] for m in json.loads(sboms.body)["manifests"]] == [
        pushed["application/vnd.example.sbom"]
    ]
    # Kept up to date on delete (deletes are enabled in PUSHERS).
    gone = pushed["application/vnd.example.sbom"]
    assert http_request("DELETE", f"{base}/manifests/{gone}").status == 202
    after = json.loads(http_request("GET", f"{base}/referrers/{digest_of(image)}").body)
    assert [m["digest"] for m in after["manifests"]] == [
        pushed["application/vnd.example.signature"]
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/acme/app/blobs/uploads/..%2F..%2Fhosted.db",
        "/v2/acme/app/blobs/uploads/../../../etc/passwd",
        "/v2/acme/app/blobs/uploads/" + "f" * 32,
        "/v2/acme/app/blobs/uploads/" + "A" * 5000,
    ],
)
def test_an_upload_id_the_registry_did_not_make_is_unknown(
    hosted: MirrorProcess, path: str
) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = http_request(method, f"{hosted.url}{path}", data=b"x" if method != "GET" else None)
        assert resp.status in (400, 404), (method, resp.status)
        assert error_code(resp) in (
            "BLOB_UPLOAD_UNKNOWN", "NAME_INVALID", "NOT_FOUND", "DIGEST_INVALID"
        )
    # Nothing outside the uploads directory was touched, and nothing was left in it.
    assert (hosted.root / "hosted.db").is_file()
    assert list((hosted.root / "uploads").iterdir()) == []


def test_a_full_disk_refuses_the_push_cleanly_and_keeps_nothing_partial(
    mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-n", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        config = json.loads(json.dumps(PUSHERS))
        config["storage"]["filesystem"] = {"rootdirectory": str(mountpoint / "data")}
        mirror = mirror_factory(upstream_proxy.url, config=config)
        data = os.urandom(12 * 1024 * 1024)  # more than the disk holds
        resp = http_request(
            "POST",
            f"{mirror.url}/v2/acme/app/blobs/uploads/?digest={digest_of(data)}",
            data=data,
            timeout=30,
        )
        assert resp.status == 507 and error_code(resp) == "UNAVAILABLE"
        assert list((mirror.root / "uploads").iterdir()) == []
        assert mirror.stored_files() == {}
        small = _push_blob(mirror, "acme/app", b"still works")  # the space was given back
        assert http_request("GET", f"{mirror.url}/v2/acme/app/blobs/{small}").status == 200
    finally:
        subprocess.run(["umount", "-n", "-l", str(mountpoint)], check=False)


def test_bytes_an_upstream_brought_are_not_a_hosted_repositorys_and_pushed_ones_not_a_mirrors(
    hosted: MirrorProcess, images: Any, upstream_proxy: RecordingProxy
) -> None:
    """Rule (d) of "Who may read a digest": a hosted repository reads only what was pushed
    to it, however the same file came to be on disk; a mirrored repository never reads
    what was only pushed."""
    image = images.oci_small
    layer = image.source.layer_digests[0]
    cached = http_request("GET", f"{hosted.url}/v2/{image.repo}/blobs/{layer}")
    assert cached.status == 200 and digest_of(cached.body) == layer  # in the store now

    resp = http_request("GET", f"{hosted.url}/v2/acme/app/blobs/{layer}")
    assert resp.status == 404 and error_code(resp) == "BLOB_UNKNOWN"
    config = _push_blob(hosted, "acme/app", b"{}")
    manifest = image_manifest(config, 2, [(layer, len(cached.body))])
    resp = http_request(
        "PUT",
        f"{hosted.url}/v2/acme/app/manifests/v1",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400 and error_code(resp) == "MANIFEST_BLOB_UNKNOWN"

    pushed = _push_blob(hosted, "acme/app", b"only ever pushed")
    upstream_proxy.reset()
    resp = http_request("GET", f"{hosted.url}/v2/{image.repo}/blobs/{pushed}")
    assert resp.status == 404 and error_code(resp) == "BLOB_UNKNOWN"
    # Asked of the upstream, which does not have it: the file on disk was not served.
    assert [e.status for e in upstream_proxy.requests("GET", pushed)] == [404]
