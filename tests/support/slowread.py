"""A client slower than the mirror: reads a blob at a set rate, recording what it got."""

from __future__ import annotations

import hashlib
import http.client
import time
from typing import Any

from tests.support import MiB


def read_blob(
    host: str, path: str, per_second: int, got: list[int], result: dict[str, Any]
) -> None:
    """GET ``path``, reading at most ``per_second`` bytes/s; records status, length, the
    sha256 of what arrived and, for a failed or short transfer, ``error``."""
    digest = hashlib.sha256()
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        result["status"] = answer.status
        result["length"] = int(answer.headers["Content-Length"])
        start = time.monotonic()
        while chunk := answer.read(MiB):
            digest.update(chunk)
            got[0] += len(chunk)
            # Throttle: a client slower than the upstream, so the stop lands mid-transfer.
            ahead = got[0] / per_second - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if got[0] != result["length"]:  # http.client ends a short body quietly
            result["error"] = f"connection closed after {got[0]} of {result['length']} bytes"
    except (OSError, http.client.HTTPException) as exc:
        result["error"] = repr(exc)
    finally:
        conn.close()
        result["sha256"] = digest.hexdigest()
