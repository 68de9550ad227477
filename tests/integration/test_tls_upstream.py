"""The mirror in front of an upstream that serves only TLS, as every real registry does.

The upstream is a real ``docker-registry`` with ``http.tls`` (a certificate for
``IP:127.0.0.1`` from the test's own CA); the mirror gets ``SSL_CERT_FILE=<the CA>`` in its
environment, which OpenSSL's default verify paths (hence Python's default TLS context, and
Go's) read instead of the system bundle. Nothing here looks inside the TLS stream, so what
reached the upstream is read from the upstream's own access log, and "served from the
cache" is shown by stopping the upstream. Without the CA the mirror must refuse the
upstream's certificate and say so with an OCI error, quickly.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support import KiB, MiB
from tests.support.clients import OPENSSL, CertAuthority, cert_dir, client_context
from tests.support.images import (
    MANIFEST_ACCEPT,
    SKOPEO,
    Image,
    blob_digests_in_dir,
    make_image,
    manifest_digest_in_dir,
    pull_dir,
    run_skopeo,
    sha256_digest,
)
from tests.support.mirror import MirrorProcess
from tests.support.net import LOOPBACK, HTTPResponse, http_request, wait_until
from tests.support.registry import REGISTRY_BINARY, Registry

pytestmark = pytest.mark.integration

BIG = 24 * MiB
"""The random-data layer: several MiB, so the body crosses many TLS records and reads."""


class TlsRegistry(Registry):
    """A ``Registry`` whose ``http.tls`` is in ``extra_config``: reached at ``https://``
    (its start-up probe does not check the certificate; the tests do)."""

    @property
    def url(self) -> str:
        return f"https://{self.host}"


@dataclass(frozen=True)
class TlsUpstream:
    registry: TlsRegistry
    ca: CertAuthority
    certs: Path
    """containers-certs.d directory trusting ``ca`` (skopeo's ``--dest-cert-dir``)."""
    big: Image
    """``tls/big:v1``: one uncompressed layer of BIG random bytes (plus the tar's headers)."""
    multi: Image
    """``tls/multi:v1``: three gzip layers."""

    def env(self) -> dict[str, str]:
        """What a mirror needs in its environment to trust the upstream."""
        return {"SSL_CERT_FILE": str(self.ca.cert)}

    def https_get(self, path: str, headers: dict[str, str] | None = None) -> HTTPResponse:
        """GET from the upstream over TLS, verifying its certificate against the CA."""
        ctx = client_context(self.ca.cert)
        conn = http.client.HTTPSConnection(LOOPBACK, self.registry.port, timeout=30, context=ctx)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return HTTPResponse(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def upstream_blob_gets(self, repo: str, digest: str) -> int:
        """``GET`` requests for that blob in the upstream's access log (all runs)."""
        return self.registry.log_text().count(f'"GET /v2/{repo}/blobs/{digest} ')


def _push(upstream: TlsRegistry, certs: Path, image: Image, repo: str) -> None:
    """skopeo push over verified TLS; the upstream then serves exactly the layout's manifest."""
    with_digest = upstream.root / f"{repo.replace('/', '_')}.digest"
    run_skopeo(
        [
            "copy",
            "--retry-times=0",
            f"--dest-cert-dir={certs}",
            "--preserve-digests",
            f"--digestfile={with_digest}",
            image.oci_ref,
            f"docker://{upstream.host}/{repo}:{image.ref}",
        ]
    )
    assert with_digest.read_text().strip() == image.manifest_digest


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsUpstream]:
    """One TLS docker-registry for the module, holding ``big`` and ``multi``."""
    for tool in (REGISTRY_BINARY, SKOPEO, OPENSSL):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    base = tmp_path_factory.mktemp("tls-upstream")
    ca = CertAuthority(base / "ca", "pullthrough upstream CA")
    pair = ca.issue("upstream")
    tls = {"certificate": str(pair.cert), "key": str(pair.key)}
    registry = TlsRegistry(base / "registry", extra_config={"http": {"tls": tls}})
    registry.start()
    try:
        certs = cert_dir(base / "certs", ca=ca.cert)
        big = make_image(base / "big", [BIG], ref="v1")
        multi = make_image(
            base / "multi", [1 * MiB, 300 * KiB, 2 * MiB], ref="v1", compression="gzip"
        )
        _push(registry, certs, big, "tls/big")
        _push(registry, certs, multi, "tls/multi")
        upstream = TlsUpstream(registry, ca, certs, big, multi)
        # The upstream answers over verified TLS, and plain HTTP only with a refusal.
        held = upstream.https_get("/v2/tls/multi/manifests/v1", {"Accept": MANIFEST_ACCEPT})
        assert held.status == 200 and sha256_digest(held.body) == multi.manifest_digest
        assert http_request("GET", f"http://{registry.host}/v2/").status == 400
        yield upstream
    finally:
        registry.stop()


@pytest.fixture
def tls_mirror(mirror_factory: MirrorFactory, tls_upstream: TlsUpstream) -> MirrorProcess:
    """A fresh mirror (empty cache) of the TLS upstream, trusting its CA."""
    return mirror_factory(tls_upstream.registry.url, env=tls_upstream.env())


def _blob_url(mirror: MirrorProcess, repo: str, digest: str) -> str:
    return f"{mirror.url}/v2/{repo}/blobs/{digest}"


def _assert_no_traceback(mirror: MirrorProcess) -> None:
    assert "Traceback" not in mirror.log_text(), mirror.log_tail(80)


def test_cold_blob_comes_over_tls_and_is_then_served_from_the_cache(
    tls_upstream: TlsUpstream, tls_mirror: MirrorProcess
) -> None:
    repo, layer = "tls/big", tls_upstream.big.layers[0]
    assert layer.size > BIG  # the tar's headers on top of the random file
    url = _blob_url(tls_mirror, repo, layer.digest)
    gets_before = tls_upstream.upstream_blob_gets(repo, layer.digest)

    cold = http_request("GET", url, timeout=60)
    assert cold.status == 200, cold.body[:300]
    assert len(cold.body) == layer.size
    assert sha256_digest(cold.body) == layer.digest
    # The bytes came from the TLS upstream (its access log has the mirror's GET).
    assert tls_upstream.upstream_blob_gets(repo, layer.digest) > gets_before
    wait_until(lambda: layer.digest in tls_mirror.stored_files(), timeout=30, message="blob stored")

    tls_upstream.registry.stop()
    try:
        warm = http_request("GET", url, timeout=60)
        assert warm.status == 200, warm.body[:300]
        assert hashlib.sha256(warm.body).hexdigest() == layer.digest.removeprefix("sha256:")
        assert warm.body == cold.body
    finally:
        tls_upstream.registry.start()
    _assert_no_traceback(tls_mirror)


def test_skopeo_pulls_a_multi_layer_image_through_the_mirror(
    tls_upstream: TlsUpstream, tls_mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = tls_upstream.multi
    upstream_manifest = tls_upstream.https_get(
        f"/v2/tls/multi/manifests/{image.ref}", {"Accept": MANIFEST_ACCEPT}
    )
    assert upstream_manifest.status == 200
    upstream_digest = sha256_digest(upstream_manifest.body)

    dest = tmp_path / "pulled"
    pull_dir(f"{tls_mirror.host}/tls/multi:{image.ref}", dest, timeout=60)
    assert manifest_digest_in_dir(dest) == upstream_digest == image.manifest_digest
    # Every blob the copy holds hashes to its name, and they are the image's blobs.
    assert set(blob_digests_in_dir(dest)) == image.blob_digests
    _assert_no_traceback(tls_mirror)


def test_range_get_of_a_cold_blob(tls_upstream: TlsUpstream, tls_mirror: MirrorProcess) -> None:
    layer = tls_upstream.big.layers[0]
    data = tls_upstream.big.blob_file(layer.digest).read_bytes()
    assert len(data) == layer.size

    part = http_request(
        "GET",
        _blob_url(tls_mirror, "tls/big", layer.digest),
        headers={"Range": "bytes=100-1000"},
        timeout=60,
    )
    assert part.status == 206, part.body[:300]
    assert part.header("Content-Range") == f"bytes 100-1000/{layer.size}"
    assert part.body == data[100:1001]
    _assert_no_traceback(tls_mirror)


def test_untrusted_upstream_certificate_is_a_quick_clean_oci_error(
    tls_upstream: TlsUpstream, mirror_factory: MirrorFactory
) -> None:
    """No SSL_CERT_FILE: the test CA is in no trust store the mirror reads (it was made
    for this run), so the upstream's certificate must be refused."""
    mirror = mirror_factory(tls_upstream.registry.url)
    layer = tls_upstream.big.layers[0]
    start = time.monotonic()
    resp = http_request("GET", _blob_url(mirror, "tls/big", layer.digest), timeout=30)
    elapsed = time.monotonic() - start
    print(f"untrusted upstream: {resp.status} after {elapsed:.2f}s: {resp.body[:500]!r}")
    assert resp.status in (502, 503), resp.body[:500]
    assert (resp.header("Content-Type") or "").startswith("application/json")
    doc = json.loads(resp.body)
    errors = doc["errors"]
    assert errors and all(isinstance(e["code"], str) and e["code"] for e in errors), doc
    # An operator reading the answer (or the log) learns why: the certificate.
    assert any("certificate" in str(e.get("message", "")).lower() for e in errors), doc
    assert "Traceback" not in resp.body.decode(errors="replace")
    assert elapsed < 5, elapsed
    assert layer.digest not in mirror.stored_files()
    _assert_no_traceback(mirror)
