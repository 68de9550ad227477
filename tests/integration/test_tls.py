"""``http.tls``: the mirror serves over TLS with the configured certificate (here one signed
by the test's own CA, for ``IP:127.0.0.1``), and with ``http.tls.clientcas`` only to
clients presenting a certificate from one of those CAs (mutual TLS).

skopeo reads a certificate directory as containers-certs.d(5) lays it out (``--src-cert-dir``:
``ca.crt`` to trust, ``client.cert`` + ``client.key`` to present). Every refusal must be
quick and clean: a failed handshake or a plain-HTTP request on the TLS port is answered
(or the connection closed) at once, never left hanging, and the mirror keeps serving.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.integration.conftest import MirrorFactory
from tests.support.clients import (
    CertAuthority,
    KeyPair,
    cert_dir,
    client_context,
    start_mutual_tls_mirror,
)
from tests.support.images import ImageSet, manifest_digest_in_dir, run_skopeo
from tests.support.mirror import MirrorProcess
from tests.support.net import LOOPBACK
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.integration

QUICK = 2.0
"""Seconds within which a refused client must hear so (handshake failure, 400, close)."""


def _tls_config(server: KeyPair, clientcas: list[Path] | None = None) -> dict[str, object]:
    tls: dict[str, object] = {"certificate": str(server.cert), "key": str(server.key)}
    if clientcas:
        tls["clientcas"] = [str(ca) for ca in clientcas]
    return {"http": {"tls": tls}}


@pytest.fixture
def server_ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "server-ca", "pullthrough server CA")


@pytest.fixture
def tls_mirror(
    server_ca: CertAuthority, mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy
) -> MirrorProcess:
    """A mirror serving https with a certificate from ``server_ca``."""
    return mirror_factory(upstream_proxy.url, config=_tls_config(server_ca.issue("mirror")))


def _skopeo_copy(
    mirror: MirrorProcess, ref: str, dest: Path, certs: Path | None, *, timeout: float = 60
) -> tuple[int, str, float]:
    """``skopeo copy`` from the mirror over verified TLS: (exit code, stderr, seconds)."""
    args = ["copy", "--retry-times=0"]
    if certs is not None:
        args.append(f"--src-cert-dir={certs}")
    start = time.monotonic()
    proc = run_skopeo(
        [*args, f"docker://{mirror.host}/{ref}", f"dir:{dest}"], timeout=timeout, check=False
    )
    return proc.returncode, proc.stderr, time.monotonic() - start


def _assert_refused_at_tls(err: str) -> None:
    """skopeo's error is about the connection to ``/v2/``, not an HTTP answer or a time-out.

    A TLS alert (``remote error: tls: certificate required``) would be the informative
    refusal; asyncio (CPython < 3.14, uvloop) closes the connection without sending the
    alert OpenSSL made (python/cpython#98078), so Go clients report ``EOF``.
    """
    assert 'Get "https://' in err.replace('\\"', '"') and "/v2/" in err, err
    # Go says "server closed idle connection" when the close comes before it wrote the request.
    refusals = ("EOF", "tls:", "connection reset", "server closed idle connection")
    assert any(refusal in err for refusal in refusals), err
    assert "timeout" not in err.lower(), err


def _assert_no_traceback(mirror: MirrorProcess) -> None:
    log = mirror.log_text()
    assert "Traceback" not in log, mirror.log_tail(80)
    assert " ERROR " not in log, mirror.log_tail(80)


def test_skopeo_pulls_over_tls_verifying_the_mirrors_certificate(
    images: ImageSet, server_ca: CertAuthority, tls_mirror: MirrorProcess, tmp_path: Path
) -> None:
    trust = cert_dir(tmp_path / "trust", ca=server_ca.cert)
    rc, err, _ = _skopeo_copy(tls_mirror, images.oci_small.ref, tmp_path / "pulled", trust)
    assert rc == 0, err
    assert manifest_digest_in_dir(tmp_path / "pulled") == images.oci_small.digest

    # Without the CA the certificate is refused: the verification above was real.
    rc, err, seconds = _skopeo_copy(tls_mirror, images.oci_small.ref, tmp_path / "untrusted", None)
    assert rc != 0
    assert "certificate signed by unknown authority" in err, err
    assert seconds < 30, seconds
    _assert_no_traceback(tls_mirror)


@pytest.fixture
def client_ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "client-ca", "pullthrough client CA")


@pytest.fixture
def mtls_mirror(
    server_ca: CertAuthority,
    client_ca: CertAuthority,
    mirror_factory: MirrorFactory,
    upstream_proxy: RecordingProxy,
) -> MirrorProcess:
    """A mirror that serves only clients with a certificate from ``client_ca``."""
    mirror = mirror_factory(
        upstream_proxy.url,
        config=_tls_config(server_ca.issue("mirror"), clientcas=[client_ca.cert]),
        start=False,
    )
    return start_mutual_tls_mirror(mirror, client_ca.issue("probe", usage="client"))


def test_mutual_tls_serves_clients_with_a_certificate_from_clientcas_only(
    images: ImageSet,
    server_ca: CertAuthority,
    client_ca: CertAuthority,
    mtls_mirror: MirrorProcess,
    tmp_path: Path,
) -> None:
    ref = images.schema2.ref
    good = cert_dir(
        tmp_path / "good", ca=server_ca.cert, client=client_ca.issue("skopeo", usage="client")
    )
    rc, err, _ = _skopeo_copy(mtls_mirror, ref, tmp_path / "pulled", good)
    assert rc == 0, err
    assert manifest_digest_in_dir(tmp_path / "pulled") == images.schema2.digest

    # No client certificate: the handshake is refused, at once.
    bare = cert_dir(tmp_path / "bare", ca=server_ca.cert)
    rc, err, seconds = _skopeo_copy(mtls_mirror, ref, tmp_path / "no-cert", bare)
    print(f"skopeo without a client certificate: exit {rc} after {seconds:.2f}s: {err.strip()}")
    assert rc != 0
    _assert_refused_at_tls(err)
    assert seconds < 10, seconds

    # A client certificate from another CA is no better.
    stranger = CertAuthority(tmp_path / "other-ca", "someone else's CA")
    other = cert_dir(
        tmp_path / "other", ca=server_ca.cert, client=stranger.issue("intruder", usage="client")
    )
    rc, err, seconds = _skopeo_copy(mtls_mirror, ref, tmp_path / "other-cert", other)
    print(f"skopeo with another CA's certificate: exit {rc} after {seconds:.2f}s: {err.strip()}")
    assert rc != 0
    _assert_refused_at_tls(err)
    assert seconds < 10, seconds

    # The same, measured at the TLS layer: the refusal comes as an alert within QUICK s.
    for label, ctx in [
        ("no certificate", client_context(server_ca.cert)),
        ("foreign certificate", client_context(server_ca.cert, stranger.issue("py"))),
    ]:
        start = time.monotonic()
        with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
            conn = http.client.HTTPSConnection(
                LOOPBACK, mtls_mirror.port, timeout=QUICK * 2, context=ctx
            )
            try:
                conn.request("GET", "/v2/")
                conn.getresponse().read()
            finally:
                conn.close()
        elapsed = time.monotonic() - start
        print(f"python client, {label}: {refused.value!r} after {elapsed:.3f}s")
        assert elapsed < QUICK, (label, elapsed)

    # Still serving the right clients afterwards.
    rc, err, _ = _skopeo_copy(mtls_mirror, images.oci_small.ref, tmp_path / "again", good)
    assert rc == 0, err
    _assert_no_traceback(mtls_mirror)


def test_plain_http_on_the_tls_port_gets_a_quick_clean_refusal(tls_mirror: MirrorProcess) -> None:
    """An ``http://`` request to the https port: a 400 or a closed connection within QUICK
    seconds (not a client left waiting for its read time-out), and TLS clients are still
    served afterwards."""
    for _ in range(3):
        start = time.monotonic()
        conn = http.client.HTTPConnection(LOOPBACK, tls_mirror.port, timeout=QUICK * 5)
        try:
            conn.request("GET", "/v2/")
            outcome: object = conn.getresponse().status
        except (ConnectionError, http.client.HTTPException) as exc:
            outcome = exc
        finally:
            conn.close()
        elapsed = time.monotonic() - start
        print(f"plain HTTP to the TLS port: {outcome!r} after {elapsed:.3f}s")
        assert outcome == 400 or not isinstance(outcome, int), outcome
        assert not isinstance(outcome, TimeoutError)
        assert elapsed < QUICK, elapsed

    # A client that connects and sends nothing at all does not block anyone else.
    idle = socket.create_connection((LOOPBACK, tls_mirror.port), timeout=QUICK)
    try:
        ctx = client_context()
        conn = http.client.HTTPSConnection(LOOPBACK, tls_mirror.port, timeout=QUICK, context=ctx)
        try:
            conn.request("GET", "/v2/")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    finally:
        idle.close()
    _assert_no_traceback(tls_mirror)
