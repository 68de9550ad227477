"""Replicas on one bucket sign their reads of each other's downloads (cluster.peers): only
a request signed with the same secret, for exactly that upstream and digest and not
expired, is answered; a claim's node from Redis is dialled only if it is a plain URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullthrough.cluster.peers import LIFETIME, SKEW, PeerKey, peer_url
from pullthrough.config import ConfigError, load

DIGEST = "sha256:" + "ab" * 32
SECRET = "the same on every replica"
NOW = 1_800_000_000.0


def test_a_signature_holds_for_its_request_only() -> None:
    key = PeerKey(SECRET)
    header = key.sign("docker.io", DIGEST, now=NOW)
    assert key.verify(header, "docker.io", DIGEST, now=NOW)
    assert not PeerKey("another replica's secret").verify(header, "docker.io", DIGEST, now=NOW)
    assert not key.verify(header, "ghcr.io", DIGEST, now=NOW)
    assert not key.verify(header, "docker.io", "sha256:" + "cd" * 32, now=NOW)


def test_a_signature_expires() -> None:
    key = PeerKey(SECRET)
    header = key.sign("docker.io", DIGEST, now=NOW)
    assert key.verify(header, "docker.io", DIGEST, now=NOW + LIFETIME + SKEW - 1)
    assert not key.verify(header, "docker.io", DIGEST, now=NOW + LIFETIME + SKEW + 1)
    # Signed far in the future (a clock way off, or a forged expiry): refused as well.
    ahead = key.sign("docker.io", DIGEST, now=NOW + 10 * LIFETIME)
    assert not key.verify(ahead, "docker.io", DIGEST, now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer x",
        "PullthroughPeer",
        "PullthroughPeer 1800000060",
        "PullthroughPeer 1800000060:",
        "PullthroughPeer -1:" + "0" * 64,
        "PullthroughPeer 99999999999999999999:" + "0" * 64,
        "PullthroughPeer 1800000060:" + "0" * 64,
        "PullthroughPeer 1800000060:" + "0" * 5000,
    ],
)
def test_malformed_or_forged_headers_are_refused(header: str | None) -> None:
    assert not PeerKey(SECRET).verify(header, "docker.io", DIGEST, now=NOW)


@pytest.mark.parametrize(
    ("node", "url"),
    [
        ("http://10.0.0.11:5000", "http://10.0.0.11:5000"),
        ("https://replica-0.pullthrough:5000/", "https://replica-0.pullthrough:5000"),
        ("http://[fd00::11]:5000", "http://[fd00::11]:5000"),
        ("http://replica", "http://replica"),
        ("ftp://10.0.0.11", None),
        ("file:///etc/passwd", None),
        ("http://user:pw@10.0.0.11:5000", None),
        ("http://10.0.0.11:5000/elsewhere", None),
        ("http://10.0.0.11:5000?x=1", None),
        ("http://10.0.0.11:99999", None),
        ("10.0.0.11:5000", None),
        ("http://", None),
    ],
)
def test_a_claims_node_is_dialled_only_as_a_plain_url(node: str, url: str | None) -> None:
    assert peer_url(node) == url


def _config(tmp_path: Path, cluster: str, *, s3: bool = True) -> str:
    storage = (
        "storage: {s3: {bucket: b, region: us-east-1, regionendpoint: 'http://127.0.0.1:9'}}"
        if s3
        else f"storage: {{filesystem: {{rootdirectory: '{tmp_path}'}}}}"
    )
    path = tmp_path / "config.yml"
    path.write_text(f"{storage}\nmirror: {{cluster: {cluster}}}\n")
    return str(path)


def test_the_secret_is_used_on_a_bucket_and_said_unused_on_a_shared_store(
    tmp_path: Path,
) -> None:
    cluster = "{redis: {addr: '127.0.0.1:6379'}, secret: 'sixteen or more chars'}"
    on_bucket = load(_config(tmp_path, cluster), environ={})
    assert not any("mirror.cluster.secret" in w for w in on_bucket.warnings)
    shared = load(_config(tmp_path, cluster, s3=False), environ={})
    assert any(w.startswith("mirror.cluster.secret: not used") for w in shared.warnings)
    unset = load(_config(tmp_path, "{redis: {addr: '127.0.0.1:6379'}}"), environ={})
    assert any(w.startswith("mirror.cluster.secret: not set") for w in unset.warnings)


def test_a_short_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(_config(tmp_path, "{redis: {addr: '127.0.0.1:6379'}, secret: hunter2}"), environ={})
    assert str(caught.value).startswith("mirror.cluster.secret: at least 16 characters")
    assert "hunter2" not in str(caught.value)
