"""A throwaway CA and a server certificate for ``IP:127.0.0.1``, made with ``openssl``.

For ``run.py --tls-upstream``: the upstream docker-registry serves ``cert``/``key``; the
mirrors get ``SSL_CERT_FILE=<ca>`` (read by OpenSSL's default verify paths, hence Python's
default TLS context, and by Go's crypto/x509 instead of the system bundle); skopeo gets
``cert_dir`` (containers-certs.d(5): ``ca.crt``). P-256 keys, valid a week.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "/usr/bin/openssl"
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    cert_dir: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(
        [OPENSSL, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_tls(directory: Path, ip: str = "127.0.0.1") -> TlsFiles:
    """A fresh CA and a server certificate for ``IP:<ip>`` signed by it, in ``directory``."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key = directory / "server.crt", directory / "server.key"
    csr, ext = directory / "server.csr", directory / "server.ext"
    _openssl(
        "req", "-x509", "-new", *_EC_KEY, "-days", "7", "-subj", "/CN=pullthrough bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca),
    )  # fmt: skip
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{ip}\n"
    )
    _openssl("req", "-new", *_EC_KEY, "-subj", f"/CN={ip}", "-keyout", str(key), "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "7",
        "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    cert_dir = directory / "certs.d"
    cert_dir.mkdir()
    shutil.copyfile(ca, cert_dir / "ca.crt")
    return TlsFiles(ca=ca, cert=cert, key=key, cert_dir=cert_dir)
