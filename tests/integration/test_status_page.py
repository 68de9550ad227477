"""The status page in a real browser (Debian's headless Chromium through chromedriver)
against a live mirror after real pulls: its numbers are those of ``/metrics`` and
``pullthrough ls``; a viewer limited by ``mirror.access`` sees only their repositories;
names from a hostile index render as text and run nothing; 10,000 repositories render
their first view fast. Each view is saved as a screenshot (see ``tests/support/browser``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_status_api import ls_rows
from tests.support.browser import Browser, available
from tests.support.htpasswd import write_htpasswd
from tests.support.images import pull_dir
from tests.support.net import free_port, http_request, metrics_of
from tests.support.proxy import RecordingProxy
from tests.support.seeding import seed_store

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")


@pytest.fixture
def browser_factory(tmp_path: Path) -> Iterator[Callable[[], Browser]]:
    shots = Path(os.environ.get("PULLTHROUGH_SCREENSHOTS") or tmp_path / "screenshots")
    made: list[Browser] = []

    def factory() -> Browser:
        browser = Browser(tmp_path / f"profile-{len(made)}", shots)
        made.append(browser)
        return browser

    yield factory
    for browser in made:
        browser.close()


def rows(browser: Browser) -> list[dict[str, Any]]:
    return list(browser.driver.execute_script(
        "return [...document.querySelectorAll('#repositories tr.image')].map(r => ({"
        "upstream: r.dataset.upstream, repository: r.dataset.repository, tag: r.dataset.tag,"
        "size: Number(r.querySelector('.size').dataset.bytes),"
        "repo_text: r.querySelector('.repo').textContent}))"
    ))


def text(browser: Browser, element_id: str) -> str:
    return str(browser.driver.execute_script(
        f"return document.getElementById('{element_id}').textContent"))


def data_bytes(browser: Browser, element_id: str) -> int:
    return int(browser.driver.execute_script(
        f"return document.getElementById('{element_id}').dataset.bytes"))


def severe(browser: Browser) -> list[dict[str, Any]]:
    return [e for e in browser.console() if e.get("level") == "SEVERE"]


def test_page_shows_the_numbers_of_metrics_and_ls(
    mirror_factory, upstream_proxy: RecordingProxy, images, browser_factory, tmp_path: Path
) -> None:
    port = free_port()
    mirror = mirror_factory(upstream_proxy.url, config={
        "http": {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}},
        "mirror": {"ui": {"history_interval": "0.2s"}},
    })
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "a")
    pull_dir(images.oci_small.on(mirror.host), tmp_path / "b")
    pull_dir(images.multi.on(mirror.host), tmp_path / "c", all=True)
    browser = browser_factory()
    seconds = browser.open(f"{mirror.url}/ui/")
    m = metrics_of(f"http://127.0.0.1:{port}")

    def summed(prefix: str, label: str = "") -> int:
        return int(sum(v for k, v in m.items() if k.startswith(prefix + "{") and label in k))

    hits = summed("pullthrough_cache_total", 'result="hit"') + summed(
        "pullthrough_cache_total", 'result="stale"')
    misses = summed("pullthrough_cache_total", 'result="miss"')
    assert text(browser, "hits") == str(hits) and text(browser, "misses") == str(misses)
    assert text(browser, "hit-ratio") == f"{hits / (hits + misses) * 100:.1f}%"
    served, fetched = summed("pullthrough_served_bytes_total"), summed(
        "pullthrough_upstream_bytes_total")
    assert data_bytes(browser, "served") == served
    assert data_bytes(browser, "fetched") == fetched
    assert data_bytes(browser, "saved") == served - fetched
    assert data_bytes(browser, "store") == int(m["pullthrough_store_bytes"])

    shown = {(r["upstream"], r["repository"], r["tag"]): r["size"] for r in rows(browser)}
    listed = {(r["upstream"], r["repository"], r["tag"]): r["size"]
              for r in ls_rows(mirror) if r["tag"] is not None}
    assert shown == listed and len(shown) == 2
    assert browser.wait_for("document.querySelectorAll('#charts canvas').length >= 3")
    assert severe(browser) == []
    browser.screenshot("status-overview")
    print(f"first view after 3 pulls: {seconds * 1000:.0f} ms")


def test_a_limited_viewer_sees_only_their_repositories(
    mirror_factory, upstream_proxy: RecordingProxy, images, browser_factory, tmp_path: Path
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

    seen = {}
    for who in (ALICE, BOB):
        browser = browser_factory()
        browser.login(*who)
        browser.open(f"{mirror.url}/ui/")
        seen[who[0]] = sorted(r["repository"] for r in rows(browser))
        assert browser.wait_for("document.querySelectorAll('#charts canvas').length >= 3")
        browser.screenshot(f"status-as-{who[0]}")
        page = browser.driver.page_source
        if who == BOB:
            assert "schema2" not in page
    assert seen == {"alice": ["library/oci-small", "library/schema2"],
                    "bob": ["library/oci-small"]}
    # And the JSON behind it, for bob: the same one repository.
    auth = "Basic " + base64.b64encode(f"{BOB[0]}:{BOB[1]}".encode()).decode()
    got = http_request("GET", f"{mirror.url}/ui/api/repositories",
                       headers={"Authorization": auth})
    assert [r["repository"] for r in json.loads(got.body)["repositories"]] == [
        "library/oci-small"]


PAYLOAD_REPO = "x/<img src=x onerror=\"window.pwned=1\">"
PAYLOAD_TAG = "\"><script>window.pwned=2</script>"


def test_hostile_names_render_as_text_and_run_nothing(
    mirror_factory, upstream_proxy: RecordingProxy, browser_factory, tmp_path: Path
) -> None:
    root = tmp_path / "hostile"
    seed_store(root, 1, names=[PAYLOAD_REPO], tag=PAYLOAD_TAG)
    mirror = mirror_factory(upstream_proxy.url, config={
        "storage": {"filesystem": {"rootdirectory": str(root)}},
    })
    browser = browser_factory()
    browser.open(f"{mirror.url}/ui/?q=%3Cscript%3Ewindow.pwned%3D3%3C%2Fscript%3E")
    browser.open(f"{mirror.url}/ui/")
    (row,) = rows(browser)
    assert row["repository"] == PAYLOAD_REPO and row["tag"] == PAYLOAD_TAG
    assert row["repo_text"] == f"docker.io/{PAYLOAD_REPO}"
    assert browser.driver.execute_script("return window.pwned === undefined")
    assert browser.driver.execute_script(
        "return document.querySelectorAll('img').length === 0 && "
        "[...document.scripts].every(s => s.src.includes('/ui/static/'))")
    log = browser.console()
    assert not [e for e in log if "pwned" in e.get("message", "")], log
    assert severe(browser) == [], log
    # An inline script would be refused by the policy even if one slipped through.
    csp = http_request("GET", f"{mirror.url}/ui/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    browser.screenshot("status-hostile-names")


def test_first_view_with_10000_repositories(
    mirror_factory, upstream_proxy: RecordingProxy, browser_factory, tmp_path: Path
) -> None:
    root = tmp_path / "big"
    seed_store(root, 10_000)
    mirror = mirror_factory(upstream_proxy.url, config={
        "storage": {"filesystem": {"rootdirectory": str(root)}},
    })
    browser = browser_factory()
    browser.open(f"{mirror.url}/ui/static/status.css")  # the browser itself is warm
    times = [browser.open(f"{mirror.url}/ui/") for _ in range(3)]
    assert text(browser, "repo-total") == "10000"
    assert len(rows(browser)) == 50
    weight = sum(len(http_request("GET", f"{mirror.url}{p}").body) for p in (
        "/ui/", "/ui/static/status.css", "/ui/static/status.js",
        "/ui/static/uPlot.iife.min.js", "/ui/static/uPlot.min.css"))
    print(f"first view with 10,000 repositories: {times[0] * 1000:.0f} ms "
          f"(then {', '.join(f'{t * 1000:.0f}' for t in times[1:])} ms); "
          f"page weight {weight / 1024:.0f} KiB")
    browser.screenshot("status-10000-repositories")
    assert min(times) < 1.0 and times[0] < 3.0, times
