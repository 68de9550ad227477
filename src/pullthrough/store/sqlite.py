"""Opening the SQLite files the mirror keeps (the index, hosted repositories' records, the
status history) the same way: a busy time-out for the moments two processes write, the
schema in place. How durable a commit must be is each file's own choice, and so is the
journal: WAL where one host uses the file (readers never wait for the writer; commands may
read while the server runs), a rollback journal where replicas on several hosts may share
it over a network filesystem (WAL needs shared memory between its users, which such a
filesystem does not give; a rollback journal needs only its POSIX locks)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def open_wal(path: Path, schema: str, *, synchronous: str) -> sqlite3.Connection:
    """Open (creating) ``path`` in autocommit mode and WAL with ``schema`` applied;
    ``synchronous`` is SQLite's setting (``NORMAL``: a crash may lose the last commits,
    never corrupt)."""
    conn = _connect(path, synchronous)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(schema)
    return conn


def open_shared(path: Path, schema: str, *, synchronous: str) -> sqlite3.Connection:
    """As ``open_wal``, with a rollback journal: safe for processes on several hosts that
    share ``path`` on a filesystem with working POSIX locks. A file in WAL (written by an
    earlier version) is switched back when no other process has it open; until then it
    stays in WAL, which every user of it then follows."""
    conn = _connect(path, synchronous)
    # Another process holding it in WAL refuses the switch: consistent for all, and
    # switched at a later start.
    with contextlib.suppress(sqlite3.OperationalError):
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.executescript(schema)
    return conn


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous={synchronous!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn
