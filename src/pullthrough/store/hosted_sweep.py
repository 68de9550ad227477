"""Mark and sweep over ``hosted.db``: what hosted repositories no longer reference.

Marked: every remaining manifest of a hosted repository (tags name manifests, so they are
marked through them) and everything those manifests reference (``hosted_children``).
Swept: a repository's blob rows that no manifest of that repository references, unless
pushed within the grace period (a client pushes blobs before the manifest naming them).
A digest that then has no row in any hosted repository is *released*; its file may go
(``files``), which the caller decides with the file in hand (``pullthrough gc``).

Blocking (SQLite): for offline commands, run in a thread.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from pullthrough.store.hosted_index import release

_UNREFERENCED = """
SELECT b.repo, b.digest, b.size FROM hosted_blobs b
WHERE b.created < ? AND NOT EXISTS (
    SELECT 1 FROM hosted_children c
    JOIN hosted_manifests m ON m.repo = c.repo AND m.digest = c.manifest
    WHERE c.repo = b.repo AND c.child = b.digest)
ORDER BY b.repo, b.digest
"""


@dataclass(frozen=True, slots=True)
class Garbage:
    """What one collection found: blob rows nothing references, and the digests no hosted
    repository holds any more (their files are candidates for removal)."""

    blobs: tuple[tuple[str, str, int], ...]  # (repo, digest, size)
    files: tuple[str, ...]


def collect(db: sqlite3.Connection, *, pushed_before: float, dry_run: bool) -> Garbage:
    """Mark and sweep in one write transaction, so that a manifest pushed concurrently is
    either seen (and what it references kept) or recorded after the sweep (and then finds
    the rows it needs gone: ``MANIFEST_BLOB_UNKNOWN``, never a manifest naming nothing).
    With ``dry_run`` nothing is written."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        blobs = tuple(
            (str(r[0]), str(r[1]), int(r[2]))
            for r in db.execute(_UNREFERENCED, (pushed_before,)).fetchall()
        )
        swept = set(blobs)
        if not dry_run:
            db.executemany(
                "DELETE FROM hosted_blobs WHERE repo=? AND digest=?",
                [(repo, digest) for repo, digest, _ in blobs],
            )
            release(db, [digest for _, digest, _ in blobs])
        candidates = {str(r[0]) for r in db.execute("SELECT digest FROM hosted_released")}
        candidates |= {digest for _, digest, _ in blobs}
        files: list[str] = []
        for digest in sorted(candidates):
            rows = db.execute(
                "SELECT repo, digest, size FROM hosted_blobs WHERE digest=?", (digest,)
            ).fetchall()
            blob_held = any((str(r[0]), str(r[1]), int(r[2])) not in swept for r in rows)
            if blob_held or _is_manifest(db, digest):
                if not dry_run:
                    # Pushed again since it was released: held, nothing to look at.
                    db.execute("DELETE FROM hosted_released WHERE digest=?", (digest,))
                continue
            files.append(digest)
    return Garbage(blobs, tuple(files))


def held(db: sqlite3.Connection, digest: str) -> bool:
    """Whether a hosted repository holds ``digest`` now (as a blob or a manifest)."""
    row = db.execute(
        "SELECT 1 FROM hosted_blobs WHERE digest=? UNION ALL "
        "SELECT 1 FROM hosted_manifests WHERE digest=? LIMIT 1",
        (digest, digest),
    ).fetchone()
    return row is not None


def settled(db: sqlite3.Connection, digest: str) -> None:
    """``digest``'s file was removed or left to the cache: no longer gc's to look at."""
    db.execute("DELETE FROM hosted_released WHERE digest=?", (digest,))


def _is_manifest(db: sqlite3.Connection, digest: str) -> bool:
    row = db.execute("SELECT 1 FROM hosted_manifests WHERE digest=? LIMIT 1", (digest,)).fetchone()
    return row is not None
