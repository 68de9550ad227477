"""What SIGHUP re-reads without a restart.

The htpasswd file needs no signal: it is re-read within a second of changing. The TLS
certificate and key are read once at start, so a renewed certificate (certbot,
cert-manager) is loaded on SIGHUP into the live context: new handshakes get it, connections
already open keep theirs. ``mirror.policy`` is read again from the config file (it is also
re-read when the file changes). Everything else in the config needs a restart.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from pullthrough.config import Config
from pullthrough.mirror.policy_file import PolicyFile

log = logging.getLogger(__name__)


async def reload(
    config: Config, tls: ssl.SSLContext | None, policy_file: PolicyFile | None = None
) -> None:
    """Re-read what can be re-read; a file that fails to load leaves the old one in use."""
    if policy_file is not None:
        await policy_file.reload()
    if tls is None or not config.tls_certificate:
        if policy_file is None:
            log.info("SIGHUP: nothing to reload (htpasswd is re-read when it changes)")
        return
    try:
        # A few small file reads, off the loop all the same.
        await asyncio.to_thread(tls.load_cert_chain, config.tls_certificate, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        log.error(
            "SIGHUP: kept the old TLS certificate: cannot load %s: %s", config.tls_certificate, exc
        )
        return
    log.info("SIGHUP: reloaded the TLS certificate from %s", config.tls_certificate)
