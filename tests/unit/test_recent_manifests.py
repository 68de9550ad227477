"""The in-memory memo of recently served manifests: bounded, per-repository, forgettable."""

from __future__ import annotations

from pullthrough.mirror.manifests import Manifest
from pullthrough.mirror.recent import RecentManifests

MT = "application/vnd.oci.image.manifest.v1+json"


def manifest(n: int, size: int = 100) -> Manifest:
    return Manifest(f"sha256:{n:064x}", MT, bytes(size))


def test_a_manifest_is_served_only_for_the_repositories_it_was_confirmed_for() -> None:
    recent = RecentManifests()
    m = manifest(1)
    recent.put(m, ("docker.io", "library/a"))
    assert recent.linked("docker.io", "library/a", m.digest) is m
    assert recent.linked("docker.io", "library/b", m.digest) is None
    assert recent.get(m.digest) is m  # by digest alone: for callers that checked the link
    recent.put(m, ("docker.io", "library/b"))
    assert recent.linked("docker.io", "library/b", m.digest) is m


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


def test_forget_drops_the_manifest_and_its_links() -> None:
    recent = RecentManifests()
    m = manifest(1)
    recent.put(m, ("docker.io", "library/a"))
    recent.forget(m.digest)
    assert recent.get(m.digest) is None
    assert recent.linked("docker.io", "library/a", m.digest) is None
    assert recent.bytes == 0
    recent.forget(m.digest)  # twice is fine
