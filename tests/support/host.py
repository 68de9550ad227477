"""The machine's own directories that no test may leave anything new in.

A test that leaves a daemon's state under /run, /var/lib or /etc passes from then on only on
machines where that state already is: CI's fresh machine is not one of them.
"""

from __future__ import annotations

from pathlib import Path

# Where container clients would write if they used the machine's own configuration, and where
# util-linux's mount records mounts (/run/mount).
HOST_DIRS = (
    "/etc/docker",
    "/etc/containers",
    "/etc/cni/net.d",
    "/opt",
    "/run",
    "/dev/shm",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/var/lib/containers/storage",
)

# containers/image's blob-info cache: every skopeo in the suite shares it (with the rest of the
# machine), and it only speeds up later copies.
SHARED = frozenset({"/var/lib/containers/cache"})


def host_entries() -> set[str]:
    """Every entry of ``HOST_DIRS`` now, but the shared cache."""
    found: set[str] = set()
    for top in HOST_DIRS:
        base = Path(top)
        if base.is_dir():
            found |= {str(p) for p in base.iterdir()}
    return found - SHARED
