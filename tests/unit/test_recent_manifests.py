"""The in-memory memo of recently served manifests: bounded, forgettable."""

from __future__ import annotations

from pullthrough.mirror.manifests import Manifest
from pullthrough.mirror.recent import RecentManifests

MT = "application/vnd.oci.image.manifest.v1+json"


def manifest(n: int, size: int = 100) -> Manifest:
    return Manifest(f"sha256:{n:064x}", MT, bytes(size))


def test_bounded_by_bytes_least_recent_out() -> None:
    recent = RecentManifests(max_bytes=300, max_body=200)
    a, b, c = manifest(1), manifest(2), manifest(3)
    for m in (a, b, c):
        recent.put(m)
    assert recent.get(a.digest) is a  # a is now the most recent
    recent.put(manifest(4))  # 400 bytes: the least recent (b) goes
    assert recent.get(b.digest) is None
    assert recent.get(a.digest) is a
    assert recent.bytes == 300
    recent.put(manifest(5, size=201))  # too big to keep at all
    assert recent.get(manifest(5).digest) is None
    assert recent.bytes == 300


def test_forget_drops_the_manifest() -> None:
    recent = RecentManifests()
    m = manifest(1)
    recent.put(m)
    recent.forget(m.digest)
    assert recent.get(m.digest) is None
    assert recent.bytes == 0
    recent.forget(m.digest)  # twice is fine


def test_a_large_index_is_kept_too() -> None:
    # Indexes of many platforms reach several MB; re-reading and re-parsing them per GET
    # slowed every other request.
    recent = RecentManifests()
    big = manifest(1, size=3 * 1024 * 1024)
    recent.put(big)
    assert recent.get(big.digest) is big


def test_references_are_marked_in_use_at_most_once_per_interval() -> None:
    recent = RecentManifests()
    m = manifest(1)
    assert recent.touch_due(m.digest)  # not kept: every time
    recent.put(m)
    assert recent.touch_due(m.digest)
    assert not recent.touch_due(m.digest)
