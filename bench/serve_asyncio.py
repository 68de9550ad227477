"""Run ``pullthrough serve CONFIG`` on the stdlib asyncio loop instead of uvloop.

The stdlib selector loop implements ``loop.sendfile`` (zero-copy), which the server's
transfer code uses when it is available; uvloop does not, so there it reads 1 MiB chunks.
Used by the bench to compare the two loops on the same store.
"""

from __future__ import annotations

import asyncio
import sys


def main() -> int:
    from pullthrough.cli import _serve
    from pullthrough.config import load
    from pullthrough.logs import setup

    config = load(sys.argv[1])
    setup(config)
    return asyncio.run(_serve(config))


if __name__ == "__main__":
    sys.exit(main())
