"""``pullthrough health [CONFIG]``: exit 0 if the mirror this config describes answers.

For a container's ``HEALTHCHECK`` and a systemd watchdog script, without curl in the image.
With ``http.debug.addr`` set it asks ``/debug/health`` (200 only while the store is
writable and the index readable); without it, any answer below 500 from ``/v2/`` on the
registry port shows the server is up (a 401 from a mirror that wants a login included).
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys

from pullthrough.config import Config

TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds (default 5)")


def run(config: Config, args: argparse.Namespace) -> int:
    if config.debug_addr is not None:
        host, port = config.debug_addr
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            _reachable(host), port, timeout=args.timeout
        )
        path, healthy = "/debug/health", range(200, 300)
    else:
        host, port = config.host, config.port
        if config.tls_certificate:
            # The certificate names the service, not the loopback address asked here.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(
                _reachable(host), port, timeout=args.timeout, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(_reachable(host), port, timeout=args.timeout)
        path, healthy = "/v2/", range(200, 500)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print(f"unhealthy: {conn.host}:{conn.port}{path}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status not in healthy:
        print(f"unhealthy: {conn.host}:{conn.port}{path} answered {status}", file=sys.stderr)
        return 1
    print(f"healthy: {conn.host}:{conn.port}{path} answered {status}")
    return 0


def _reachable(host: str) -> str:
    """The address to ask for a server listening on ``host`` (a wildcard means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
