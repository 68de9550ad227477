"""``http.tls``: the mirror serves over TLS with the configured certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.images import ImageSet, manifest_digest_in_dir, run_skopeo

pytestmark = pytest.mark.integration


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "mirror.crt", directory / "mirror.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_skopeo_pulls_over_tls_verifying_the_mirrors_certificate(
    images: ImageSet,
    mirror_factory,
    upstream_proxy,
    tmp_path: Path,
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = _self_signed(certs)
    mirror = mirror_factory(
        upstream_proxy.url,
        config={"http": {"tls": {"certificate": str(cert), "key": str(key)}}},
    )
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "ca.crt").write_bytes(cert.read_bytes())
    dest = tmp_path / "pulled"
    run_skopeo(
        [
            "copy",
            "--retry-times=0",
            f"--src-cert-dir={trust}",
            f"docker://{images.oci_small.on(mirror.host)}",
            f"dir:{dest}",
        ],
        timeout=60,
    )
    assert manifest_digest_in_dir(dest) == images.oci_small.digest
