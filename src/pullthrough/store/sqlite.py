"""Opening the SQLite files the mirror keeps (the index, hosted repositories' records, the
status history) the same way: WAL (readers never wait for the writer; commands may read
while the server runs), a busy time-out for the moments two processes write, the schema in
place. How durable a commit must be is each file's own choice."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_wal(path: Path, schema: str, *, synchronous: str) -> sqlite3.Connection:
    """Open (creating) ``path`` in autocommit mode with ``schema`` applied; ``synchronous``
    is SQLite's setting (``NORMAL``: a crash may lose the last commits, never corrupt)."""
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous={synchronous!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(schema)
    return conn
