"""Shared fixtures: a real upstream registry with seeded test images, proxies, factories.

Session fixtures (``upstream``, ``images``) start one ``docker-registry`` process and
push three images to it once per test run. Tests must treat the upstream as
read-only for those repositories; use ``image_factory`` or ``registry_factory``
for anything they want to mutate.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from tests.support import KiB, MiB
from tests.support.host import host_entries
from tests.support.images import (
    SKOPEO,
    ImageFactory,
    ImageSet,
    PushedImage,
    make_image,
    make_index,
    publish,
)
from tests.support.proxy import ProxyFactory, RecordingProxy
from tests.support.registry import REGISTRY_BINARY, Registry, RegistryFactory

if TYPE_CHECKING:
    # Imported lazily below: only token-auth tests need pyjwt and cryptography.
    from tests.support.tokens import TokenIssuer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes several seconds or more (big blobs, outages, timeouts)"
    )
    config.addinivalue_line(
        "markers", "integration: starts real docker-registry / skopeo processes"
    )
    config.addinivalue_line("markers", "s3: storage.s3 against an S3 server on loopback")


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    """Fail a test that left new files in the machine's own directories (tests/support/host.py)."""
    before = host_entries()
    yield
    # Only entries this test created and left behind; others may come and go meanwhile.
    assert sorted(host_entries() - before) == []


def _require_tools() -> None:
    for tool in (REGISTRY_BINARY, SKOPEO):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install docker-registry skopeo)")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A started, anonymous ``docker-registry`` on 127.0.0.1 shared by the session.

    Tests may ``stop()``/``start()`` it to simulate an outage but must leave it running.
    """
    _require_tools()
    reg = Registry(tmp_path_factory.mktemp("upstream"))
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def images(upstream: Registry, tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """Seeded images pushed to ``upstream``; digests are stable across runs."""
    layouts = tmp_path_factory.mktemp("layouts")
    small = make_image(
        layouts / "small", [1 * MiB, 300 * KiB], seed="oci-small", ref="v1", compression="gzip"
    )
    multi = make_index(layouts / "multi", layer_size=256 * KiB, seed="multi", ref="v1")
    host = upstream.host
    result = ImageSet(
        upstream_host=host,
        oci_small=publish(small, host, "library/oci-small", "v1"),
        schema2=publish(small, host, "library/schema2", "v1", format="v2s2"),
        multi=publish(multi, host, "library/multi", "v1"),
    )
    # Cheap invariants the rest of the suite relies on.
    assert result.oci_small.digest == small.manifest_digest
    assert result.schema2.digest != small.manifest_digest
    assert result.schema2.blob_digests == small.blob_digests
    assert result.multi.digest == multi.index_digest
    return result


@pytest.fixture
def upstream_proxy(upstream: Registry) -> Iterator[RecordingProxy]:
    """A fresh ``RecordingProxy`` in front of ``upstream``; point the mirror at ``.url``."""
    with RecordingProxy(upstream.url) as proxy:
        yield proxy


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """``registry_factory(**Registry_kwargs) -> started Registry``; all stopped at teardown.

    Example: ``registry_factory(htpasswd=("alice", "pw"))`` or
    ``registry_factory(proxy_remoteurl=upstream.url)`` for a reference mirror.
    """
    _require_tools()
    started: list[Registry] = []
    ids = count()

    def factory(**kwargs: Any) -> Registry:
        reg = Registry(tmp_path / f"registry-{next(ids)}", **kwargs)
        started.append(reg)
        return reg.start()

    yield factory
    for reg in reversed(started):
        reg.stop()


TOKEN_USER = ("owner", "owner-secret")
"""Default user of ``token_registry_factory``: may push and pull everything."""


@pytest.fixture
def token_registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """``token_registry_factory(*, users=None, private=(), host="127.0.0.1", expires_in=300,
    key_header="x5c", **Registry_kwargs) -> started Registry`` using Docker-Hub-style token auth.

    Starts a ``TokenIssuer`` (realm on ``host``, a loopback address) and then a
    ``docker-registry`` with ``auth.token`` pointing at it; ``reg.token_issuer`` is the
    issuer (policy knobs, request records). ``users`` defaults to ``{"owner":
    "owner-secret"}`` (``TOKEN_USER``); ``reg.creds`` is the first user, so
    ``image_factory(..., registry=reg)`` can push. Both are stopped at teardown.
    """
    _require_tools()
    from tests.support.tokens import TokenIssuer

    issuers: list[TokenIssuer] = []
    registries: list[Registry] = []
    ids = count()

    def factory(
        *,
        users: Mapping[str, str] | None = None,
        private: tuple[str, ...] | set[str] | frozenset[str] = (),
        host: str = "127.0.0.1",
        expires_in: int = 300,
        key_header: Literal["x5c", "kid"] = "x5c",
        **kwargs: Any,
    ) -> Registry:
        n = next(ids)
        issuer = TokenIssuer(
            host=host,
            users=dict([TOKEN_USER]) if users is None else users,
            private=private,
            expires_in=expires_in,
            key_header=key_header,
            root=tmp_path / f"token-issuer-{n}",
        )
        issuers.append(issuer)
        issuer.start()
        reg = Registry(tmp_path / f"token-registry-{n}", token_auth=issuer, **kwargs)
        registries.append(reg)
        return reg.start()

    yield factory
    for reg in reversed(registries):
        reg.stop()
    for issuer in reversed(issuers):
        issuer.stop()


@pytest.fixture
def proxy_factory() -> Iterator[ProxyFactory]:
    """``proxy_factory(target_url) -> started RecordingProxy``; all stopped at teardown."""
    started: list[RecordingProxy] = []

    def factory(target: str) -> RecordingProxy:
        proxy = RecordingProxy(target).start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture
def image_factory(upstream: Registry, tmp_path: Path) -> ImageFactory:
    """Push fresh (unseeded unless ``seed=``) content to ``upstream``; returns a PushedImage.

    ``image_factory(repo, tag="v1", layers=(256 * KiB,), *, seed=None, format=None,
    index=False, compression="none", registry=None)``. Fresh random content means no
    cache anywhere has seen these blobs before. Pushes with ``registry.creds``; that
    includes token-auth registries (``token_registry_factory``).
    """
    ids = count()

    def factory(
        repo: str,
        tag: str = "v1",
        layers: tuple[int, ...] = (256 * KiB,),
        *,
        seed: int | str | None = None,
        format: Literal["oci", "v2s2"] | None = None,
        index: bool = False,
        compression: Literal["none", "gzip"] = "none",
        registry: Registry | None = None,
    ) -> PushedImage:
        target = registry or upstream
        layout = tmp_path / f"layout-{next(ids)}"
        built = (
            make_index(layout, layer_size=layers[0], seed=seed, ref=tag, compression=compression)
            if index
            else make_image(layout, layers, seed, ref=tag, compression=compression)
        )
        return publish(built, target.host, repo, tag, format=format, creds=target.creds)

    return factory
