"""The Dockerfile's last step: what the server needs, asked of the finished image itself.

The image holds only what ``runtime_root.py`` copied from the base and the venv, so a file
left out must fail the build here rather than a request later: every pullthrough module is
imported (but ``__main__``, which runs the CLI), the status page's templates and static files
are loaded, the compiled extensions (the accelerators packages would silently do without
too) are loaded and used, TLS finds CA certificates, users and hosts resolve, SQLite and the
event loop run, rich draws its progress bars without Pygments, and the ``pullthrough``
command starts. Run as the server's user, so a file only root can read fails too.
"""

import asyncio
import hashlib
import importlib
import io
import os
import pkgutil
import pwd
import socket
import sqlite3
import ssl
import subprocess
import sys

import bcrypt
import obstore  # noqa: F401  (storage.s3)
import uvloop
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import pullthrough

CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)
ACCELERATORS = (
    "aiohttp._http_parser",
    "aiohttp._http_writer",
    "frozenlist._frozenlist",
    "multidict._multidict",
    "propcache._helpers_c",
    "yarl._quoting_c",
    "yaml._yaml",
)


def main() -> None:
    for module in pkgutil.walk_packages(pullthrough.__path__, "pullthrough."):
        if module.name != "pullthrough.__main__":
            importlib.import_module(module.name)

    from pullthrough.progress import Reporter
    from pullthrough.server.status.page import add_page_routes

    add_page_routes(web.Application())
    assert bcrypt.checkpw(b"pw", bcrypt.hashpw(b"pw", bcrypt.gensalt(4)))
    key = ec.generate_private_key(ec.SECP256R1())
    signature = ec.ECDSA(hashes.SHA256())
    key.public_key().verify(key.sign(b"m", signature), b"m", signature)
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] > 0, "no CA certificates"
    # Where obstore (rustls, the system's roots) looks for them.
    assert any(os.path.isfile(p) for p in CA_BUNDLES), f"none of {CA_BUNDLES}"
    # Accelerators a package falls back from without a word when they cannot load.
    for module in ACCELERATORS:
        importlib.import_module(module)
    # Users and hosts, through glibc's name service (nsswitch.conf, /etc/hosts).
    assert pwd.getpwuid(os.getuid()).pw_dir == "/var/lib/registry"
    assert socket.getaddrinfo("localhost", 5000, type=socket.SOCK_STREAM)
    with sqlite3.connect(":memory:") as db:
        assert db.execute("select sqlite_version()").fetchone()
    assert uvloop.run(asyncio.sleep(0, result=hashlib.sha256(b"").hexdigest()))
    reporter = Reporter(tty=True, out=io.StringIO())
    with reporter:
        reporter.advance(reporter.add("check", 2), 1)
        reporter.line("ok")
    for command in ([sys.executable, "-m", "pullthrough"], ["pullthrough"]):
        subprocess.run([*command, "--version"], check=True)


if __name__ == "__main__":
    main()
