"""An htpasswd file for ``auth.htpasswd`` in tests (bcrypt at a low cost: tests only)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import bcrypt


def write_htpasswd(path: Path, users: Iterable[tuple[str, str]]) -> Path:
    path.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()}\n"
            for user, password in users
        )
    )
    return path
