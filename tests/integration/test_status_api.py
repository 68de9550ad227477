"""The status page's JSON API (``/ui/api/``) against a live mirror after real pulls: its
figures equal ``/metrics``, its content rows equal ``pullthrough ls``, and a viewer sees only
the repositories they may pull."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.htpasswd import write_htpasswd
from tests.support.images import MANIFEST_ACCEPT, make_image, pull_dir, push
from tests.support.mirror import MirrorProcess
from tests.support.net import clean_env, free_port, http_request, metrics_of
from tests.support.proxy import RecordingProxy
from tests.support.regclient import fetch_token
from tests.support.seeding import seed_store
from tests.support.tokens import TokenIssuer

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")


def api(mirror: MirrorProcess, path: str, auth: tuple[str, str] | None = None) -> Any:
    got = http_request("GET", f"{mirror.url}/ui/api/{path}", auth=auth)
    assert got.status == 200, got.body[:300]
    assert got.headers["Content-Type"].startswith("application/json")
    assert got.headers["Cache-Control"] == "no-store"
    return json.loads(got.body)


def ls_rows(mirror: MirrorProcess) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "pullthrough", "ls", str(mirror.config_path), "--json"],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["images"])


def names(doc: dict[str, Any]) -> list[str]:
    return [f"{r['upstream']}/{r['repository']}" for r in doc["repositories"]]


@pytest.fixture
def observed(mirror_factory, upstream_proxy: RecordingProxy) -> tuple[MirrorProcess, str]:
    port = free_port()
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}}},
    )
    return mirror, f"http://127.0.0.1:{port}"


def test_figures_equal_metrics_and_rows_equal_ls_after_known_pulls(
    observed, images, tmp_path: Path
) -> None:
    mirror, debug = observed
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "a")
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "b")  # every blob a hit now
    pull_dir(images.multi.on(mirror.host), tmp_path / "c", all=True)

    overview = api(mirror, "overview")
    m = metrics_of(debug)  # after: the overview request itself is counted by then

    def summed(prefix: str, *labels: str) -> int:
        return int(sum(v for k, v in m.items()
                       if k.startswith(prefix + "{") and all(x in k for x in labels)))

    hits, misses, stale = (summed("pullthrough_cache_total", f'result="{r}"')
                           for r in ("hit", "miss", "stale"))
    assert overview["cache"] == {
        "hits": hits, "misses": misses, "stale": stale,
        "hit_ratio": (hits + stale) / (hits + misses + stale),
    }
    assert hits >= len(images.oci_small.blob_digests) and misses > 0
    assert overview["requests"] + 1 == summed("pullthrough_requests_total")
    served = summed("pullthrough_served_bytes_total")
    fetched = summed("pullthrough_upstream_bytes_total")
    assert overview["bytes"]["served"] == served
    assert overview["bytes"]["served_from_store"] == summed(
        "pullthrough_served_bytes_total", 'source="cache"')
    assert overview["bytes"]["fetched_from_upstreams"] == fetched
    assert overview["bytes"]["saved"] == served - fetched
    # oci-small's blobs were sent twice and fetched once: the second pull saved them all.
    small = sum(images.oci_small.source.blob_file(d).stat().st_size
                for d in images.oci_small.blob_digests)
    assert overview["bytes"]["saved"] == small
    assert overview["store"]["objects"] == int(m["pullthrough_store_objects"])
    assert overview["store"]["bytes"] == int(m["pullthrough_store_bytes"])

    # Every tag row is the row ``pullthrough ls`` prints for that tag.
    listed = api(mirror, "repositories")
    assert listed["total"] == 2 and names(listed) == [
        "docker.io/library/multi", "docker.io/library/oci-small"]
    assert [r["name"] for r in listed["repositories"]] == ["library/multi", "library/oci-small"]
    ours = {
        (r["upstream"], r["repository"], t["tag"]): t
        for r in listed["repositories"] for t in r["tags"]
    }
    theirs = {(r["upstream"], r["repository"], r["tag"]): r
              for r in ls_rows(mirror) if r["tag"] is not None}
    assert ours.keys() == theirs.keys()
    for key, row in ours.items():
        ls_row = theirs[key]
        assert (row["digest"], row["size"], row["objects"], row["missing"],
                row["media_type"], row["last_access"]) == (
            ls_row["digest"], ls_row["size"], ls_row["objects"], ls_row["missing"],
            ls_row["media_type"], ls_row["last_access"]), key

    (upstream,) = api(mirror, "upstreams")["upstreams"]
    assert upstream["name"] == "docker.io" and upstream["default"] is True
    assert upstream["circuit"] == "closed" and upstream["reachable"] is True
    assert upstream["last_ok"] is not None and upstream["last_error"] is None
    assert upstream["max_downloads"] == 64
    assert api(mirror, "fetches") == {"fetches": []}


def test_repositories_are_searched_and_paged(mirror: MirrorProcess, images, tmp_path) -> None:
    for i, image in enumerate(images.all()):
        pull_dir(image.on(mirror.host), tmp_path / str(i), all=image.is_index)
    everything = names(api(mirror, "repositories"))
    assert everything == ["docker.io/library/multi", "docker.io/library/oci-small",
                          "docker.io/library/schema2"]
    pages = [api(mirror, f"repositories?per_page=2&page={p}") for p in (1, 2, 3)]
    assert [names(p) for p in pages] == [everything[:2], everything[2:], []]
    assert all(p["total"] == 3 for p in pages)
    assert names(api(mirror, "repositories?q=OCI-S")) == ["docker.io/library/oci-small"]
    assert names(api(mirror, "repositories?q=docker.io/library/m")) == [
        "docker.io/library/multi"]
    for bad in ("page=0", "per_page=201", "per_page=x", "page=-1", "q=" + "a" * 201):
        got = http_request("GET", f"{mirror.url}/ui/api/repositories?{bad}")
        assert got.status == 400, bad
        assert json.loads(got.body)["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def test_a_viewer_sees_only_the_repositories_they_may_pull(
    mirror_factory, upstream_proxy: RecordingProxy, images, tmp_path: Path
) -> None:
    users = write_htpasswd(tmp_path / "htpasswd", (ALICE, BOB))
    mirror = mirror_factory(upstream_proxy.url, config={
        "auth": {"htpasswd": {"realm": "pullthrough-test", "path": str(users)}},
        "mirror": {"access": [
            {"repositories": ["oci-small"]},
            {"repositories": ["library/schema2", "library/multi"], "users": ["alice"]},
        ]},
    })
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "a", creds=ALICE)
    pull_dir(images.schema2.on(mirror.host), tmp_path / "b", creds=ALICE)

    assert names(api(mirror, "repositories", ALICE)) == [
        "docker.io/library/oci-small", "docker.io/library/schema2"]
    bobs = api(mirror, "repositories", BOB)
    assert names(bobs) == ["docker.io/library/oci-small"] and bobs["total"] == 1
    assert api(mirror, "repositories?q=schema2", BOB)["total"] == 0
    # The same client authentication as pulls: no or wrong credentials is 401 everywhere.
    for path in ("overview", "upstreams", "fetches", "repositories"):
        for auth in (None, ("bob", "wrong")):
            got = http_request("GET", f"{mirror.url}/ui/api/{path}", auth=auth)
            assert got.status == 401, (path, auth)
            assert got.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.fixture
def client_issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(
        service="pullthrough-mirror",
        issuer="mirror-token-issuer",
        users=dict([ALICE]),
        private={"library/schema2"},
        root=tmp_path / "client-issuer",
    )
    issuer.start()
    yield issuer
    issuer.stop()


def test_with_token_auth_a_viewer_sees_what_the_token_grants_pull_on(
    client_issuer: TokenIssuer, mirror_factory, upstream_proxy, images, tmp_path: Path
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config={"auth": {"token": {
        "realm": client_issuer.url,
        "service": client_issuer.service,
        "issuer": client_issuer.issuer,
        "rootcertbundle": str(client_issuer.cert_path),
    }}})
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "a")
    pull_dir(images.schema2.on(mirror.host), tmp_path / "b", creds=ALICE)

    def listed(*repos: str) -> list[str]:
        token = fetch_token(client_issuer.url, service=client_issuer.service,
                            scopes=[f"repository:{r}:pull" for r in repos], creds=ALICE)
        got = http_request("GET", f"{mirror.url}/ui/api/repositories",
                           headers={"Authorization": f"Bearer {token}"})
        assert got.status == 200, got.body[:300]
        return names(json.loads(got.body))

    assert listed("library/oci-small") == ["docker.io/library/oci-small"]
    assert listed("library/oci-small", "library/schema2") == [
        "docker.io/library/oci-small", "docker.io/library/schema2"]
    assert listed() == []
    got = http_request("GET", f"{mirror.url}/ui/api/repositories")
    assert got.status == 401
    assert got.headers["WWW-Authenticate"].startswith(f'Bearer realm="{client_issuer.url}"')


def test_a_browser_at_the_root_is_sent_to_the_page(mirror: MirrorProcess) -> None:
    got = http_request("GET", f"{mirror.url}/", headers={"Accept": "text/html,*/*"})
    assert got.status == 302 and got.headers["Location"] == "/ui/"
    assert http_request("GET", f"{mirror.url}/").status == 404  # a script: the registry's 404
    page = http_request("GET", f"{mirror.url}/ui/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert http_request("GET", f"{mirror.url}/ui/static/../index.db").status == 404
    assert http_request("GET", f"{mirror.url}/ui/static/index.db").status == 404


def test_the_status_api_can_be_turned_off(
    mirror_factory, upstream_proxy: RecordingProxy
) -> None:
    mirror = mirror_factory(upstream_proxy.url, config={"mirror": {"ui": {"enabled": False}}})
    for path in ("/ui/api/overview", "/ui/", "/ui/static/status.js"):
        got = http_request("GET", f"{mirror.url}{path}")
        assert got.status == 404, path
        assert json.loads(got.body)["errors"][0]["code"] == "NOT_FOUND"
    assert http_request("GET", f"{mirror.url}/", headers={"Accept": "text/html"}).status == 404


def test_the_api_answers_quickly_with_10000_repositories(
    mirror_factory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    root = tmp_path / "big"
    seeded = seed_store(root, 10_000)
    mirror = mirror_factory(upstream_proxy.url, config={
        "storage": {"filesystem": {"rootdirectory": str(root)}},
    })
    timings: dict[str, float] = {}
    firsts: dict[str, float] = {}
    for path in ("overview", "upstreams", "fetches", "repositories",
                 "repositories?page=200", "repositories?q=repo-0999"):
        best = math.inf
        for _ in range(3):  # the best of three: the machine is shared
            began = time.perf_counter()
            doc = api(mirror, path)
            best = min(best, time.perf_counter() - began)
            firsts.setdefault(path, time.perf_counter() - began)
        timings[path] = best
        if path == "repositories":
            assert doc["total"] == 10_000
            assert [r["repository"] for r in doc["repositories"]] == seeded[:50]
        if path == "repositories?q=repo-0999":
            assert doc["total"] == 10
    print("\n" + "\n".join(f"GET /ui/api/{p}: {t * 1000:.0f} ms (first {firsts[p] * 1000:.0f} ms)"
                            for p, t in timings.items()))
    assert max(timings.values()) < 2.0, timings


def test_history_is_sampled_and_survives_a_restart(
    mirror_factory, upstream_proxy: RecordingProxy, images, tmp_path: Path
) -> None:
    mirror = mirror_factory(upstream_proxy.url,
                            config={"mirror": {"ui": {"history_interval": "0.2s"}}})
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "a")
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "b")
    overview = api(mirror, "overview")

    def summed(doc: dict[str, Any], key: str) -> int:
        return sum(p[key] for p in doc["points"])

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the next sample takes the pulls in
        hour = api(mirror, "history?range=hour")
        if summed(hour, "served") == overview["bytes"]["served"]:
            break
        time.sleep(0.2)
    assert hour["bucket_seconds"] == 60
    assert summed(hour, "served") == overview["bytes"]["served"]
    assert summed(hour, "fetched") == overview["bytes"]["fetched_from_upstreams"]
    assert summed(hour, "hits") == overview["cache"]["hits"] + overview["cache"]["stale"]
    assert summed(hour, "misses") == overview["cache"]["misses"]
    mirror.stop()
    mirror.start()
    for name, seconds in (("hour", 60), ("day", 900), ("week", 7200)):
        after = api(mirror, f"history?range={name}")
        assert after["bucket_seconds"] == seconds
        assert summed(after, "served") == overview["bytes"]["served"], name
    got = http_request("GET", f"{mirror.url}/ui/api/history?range=year")
    assert got.status == 400


def test_upstream_latency_is_the_time_to_its_answer(
    mirror: MirrorProcess, upstream_proxy: RecordingProxy, images, tmp_path: Path
) -> None:
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "a")
    (upstream,) = api(mirror, "upstreams")["upstreams"]
    assert upstream["latency"]["samples"] > 0
    assert 0 < upstream["latency"]["median"] <= upstream["latency"]["p90"] < 5

    upstream_proxy.stall_seconds = 0.3
    pull_dir(images.multi.on(mirror.host), tmp_path / "b", all=True)
    (upstream,) = api(mirror, "upstreams")["upstreams"]
    # Most answers in the window were stalled now, so the median is one of them.
    latency = upstream["latency"]
    assert latency["median"] >= 0.3, latency
    page = http_request("GET", f"{mirror.url}/ui/")
    assert f"{round(latency['median'] * 1000)} ms" in page.body.decode()


def test_pulls_are_counted_per_tag_and_survive_a_restart(
    mirror: MirrorProcess, images, tmp_path: Path
) -> None:
    """A pull is a manifest GET answered 200 (as registries count them): by tag for the
    tag, by digest for the repository; HEADs and blob GETs are not pulls."""
    image = images.oci_small
    manifests = f"{mirror.url}/v2/{image.repo}/manifests"
    accept = {"Accept": MANIFEST_ACCEPT}
    for method, ref in [("GET", image.tag)] * 3 + [("HEAD", image.tag), ("GET", image.digest)]:
        assert http_request(method, f"{manifests}/{ref}", headers=accept).status == 200
    for blob in image.blob_digests:
        assert http_request("GET", f"{mirror.url}/v2/{image.repo}/blobs/{blob}").status == 200
    assert http_request("GET", f"{manifests}/no-such-tag", headers=accept).status == 404

    def counted() -> tuple[dict[str, Any], dict[str, Any]]:
        (repo,) = api(mirror, "repositories")["repositories"]
        (tag,) = repo["tags"]
        return repo, tag

    repo, tag = counted()  # at once: not yet written to the index
    assert (repo["pulls"], repo["pulls_by_digest"], tag["tag"], tag["pulls"]) == (
        3, 1, image.tag, 3)
    assert tag["last_pulled"] is not None and repo["last_pulled"] >= tag["last_pulled"]
    page = http_request("GET", f"{mirror.url}/ui/").body.decode()
    assert '<span class="tag-pulls">3</span>' in page
    assert "repository: 3 by tag, 1 by digest" in page

    mirror.stop()
    mirror.start()
    assert counted() == (repo, tag)
    pull_dir(image.on(mirror.host), tmp_path / "again")  # skopeo: one manifest GET by tag
    repo, tag = counted()
    assert (repo["pulls"], tag["pulls"]) == (4, 4)


def test_hosted_repositories_are_listed_apart_for_those_who_may_pull_them(
    mirror_factory, upstream_proxy: RecordingProxy, tmp_path: Path
) -> None:
    users = write_htpasswd(tmp_path / "htpasswd", (ALICE, BOB))
    mirror = mirror_factory(upstream_proxy.url, config={
        "auth": {"htpasswd": {"realm": "pullthrough-test", "path": str(users)}},
        "mirror": {
            "hosted": {"repositories": ["acme"]},
            "access": [
                {"repositories": ["acme/app"], "actions": ["pull", "push"]},
                {"repositories": ["acme/**"], "users": ["alice"], "actions": ["pull", "push"]},
            ],
        },
    })
    image = make_image(tmp_path / "layout", layers=(4096, 2048), seed="hosted-status")
    pushed = {repo: push(image, mirror.host, repo, "v1", creds=ALICE)
              for repo in ("acme/app", "acme/secret")}
    size = sum(f.stat().st_size for f in (tmp_path / "layout" / "blobs" / "sha256").iterdir())

    mine = api(mirror, "hosted", ALICE)
    assert mine["total"] == 2
    assert [r["repository"] for r in mine["repositories"]] == ["acme/app", "acme/secret"]
    (tag,) = mine["repositories"][0]["tags"]
    assert (tag["tag"], tag["digest"], tag["objects"], tag["size"]) == (
        "v1", pushed["acme/app"], 4, size)
    bobs = api(mirror, "hosted", BOB)
    assert [r["repository"] for r in bobs["repositories"]] == ["acme/app"]
    assert api(mirror, "hosted?q=SECRET", ALICE)["total"] == 1
    # Hosted names are not cached content: the cache table stays empty.
    assert api(mirror, "repositories", ALICE)["total"] == 0

    page = http_request("GET", f"{mirror.url}/ui/", auth=BOB).body.decode()
    assert 'data-repository="acme/app" data-tag="v1"' in page
    assert "acme/secret" not in page
