"""What hosted repositories hold: blobs pushed to them, manifests, tags and referrers.

Its own SQLite file beside the mirror's index (``<root>/hosted.db``): the mirror's index
is a cache whose rows eviction and reconciliation may drop at any time, while these rows
are the only record of content that exists nowhere else. In cluster mode every replica
opens this same file under the shared root (nothing of it is cached in memory), so what
one replica records is what the next statement of any other reads; it stays beside the
bytes it describes rather than in Redis, which need not be durable. The bytes themselves
are in the shared content-addressed store; a row here is rule (d) of "Who may read a
digest" (pushed to R and verified) and keeps the file from eviction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pullthrough.store.sqlite import open_shared

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosted_blobs (
    repo TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (repo, digest));
CREATE TABLE IF NOT EXISTS hosted_manifests (
    repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
    subject TEXT, artifact_type TEXT, annotations TEXT, created REAL NOT NULL,
    PRIMARY KEY (repo, digest));
CREATE INDEX IF NOT EXISTS hosted_manifests_subject ON hosted_manifests(repo, subject);
CREATE INDEX IF NOT EXISTS hosted_blobs_digest ON hosted_blobs(digest);
CREATE INDEX IF NOT EXISTS hosted_manifests_digest ON hosted_manifests(digest);
CREATE TABLE IF NOT EXISTS hosted_children (
    repo TEXT NOT NULL, manifest TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY (repo, manifest, child));
CREATE TABLE IF NOT EXISTS hosted_tags (
    repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (repo, tag));
CREATE TABLE IF NOT EXISTS hosted_released (
    digest TEXT PRIMARY KEY, released REAL NOT NULL);
"""


class ChildGone(Exception):
    """A manifest's child is no longer held by its repository (removed by gc or a delete
    since the push checked it): the manifest is not recorded."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


@dataclass(frozen=True, slots=True)
class HostedManifest:
    """A manifest pushed to a hosted repository, as the referrers API describes it."""

    digest: str
    media_type: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, Any] | None = None


class HostedIndex:
    """An async facade over ``hosted.db``; every statement runs on one thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hosted-index")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self._conn = connect(self.path)

    async def close(self) -> None:
        def work() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(work)
        self._executor.shutdown(wait=True)

    async def current(self) -> None:
        """Make the file at ``path`` the current index before something reads it directly
        (it is; a replica's copy of a shared one may not be)."""

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "HostedIndex.open() was not awaited"
        return self._conn

    # --- blobs --------------------------------------------------------------------------

    async def add_blob(self, repo: str, digest: str, size: int) -> None:
        """``repo`` holds the verified, stored blob ``digest``."""
        await self._run(
            lambda: self._db.execute(
                "INSERT INTO hosted_blobs(repo, digest, size, created) VALUES (?,?,?,?) "
                "ON CONFLICT(repo, digest) DO UPDATE SET created=excluded.created",
                (repo, digest, size, time.time()),
            ).close()
        )

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """The size of ``digest`` if ``repo`` holds it as a blob, else None."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT size FROM hosted_blobs WHERE repo=? AND digest=?", (repo, digest)
            ).fetchone()
        )
        return int(row[0]) if row else None

    async def missing_blobs(self, repo: str, digests: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(digests))

        def work() -> list[str]:
            return [
                d
                for d in wanted
                if self._db.execute(
                    "SELECT 1 FROM hosted_blobs WHERE repo=? AND digest=?", (repo, d)
                ).fetchone()
                is None
            ]

        return await self._run(work)

    async def delete_blob(self, repo: str, digest: str) -> bool:
        def work() -> bool:
            db = self._db
            with db:
                db.execute("BEGIN")
                cur = db.execute(
                    "DELETE FROM hosted_blobs WHERE repo=? AND digest=?", (repo, digest)
                )
                if cur.rowcount > 0:
                    release(db, [digest])
                return cur.rowcount > 0

        return await self._run(work)

    # --- manifests and tags -------------------------------------------------------------

    async def add_manifest(
        self,
        repo: str,
        manifest: HostedManifest,
        *,
        subject: str | None,
        children: Iterable[str],
        tag: str | None,
    ) -> None:
        """Record a verified, stored manifest of ``repo`` (and the tag pushed with it) in
        one transaction: a reader never sees the tag before the manifest."""
        now = time.time()
        kids = [(repo, manifest.digest, c) for c in dict.fromkeys(children)]
        annotations = json.dumps(manifest.annotations) if manifest.annotations else None

        def work() -> None:
            db = self._db
            with db:
                # IMMEDIATE: the check below and the insert are one write transaction, so
                # that ``pullthrough gc`` (``hosted_sweep.collect``) sweeps either before
                # (the check fails) or after (it sees this manifest and keeps its children).
                db.execute("BEGIN IMMEDIATE")
                for child in dict.fromkeys(children):
                    if not _holds(db, repo, child):
                        raise ChildGone(child)
                db.execute(
                    "INSERT INTO hosted_manifests(repo, digest, media_type, size, subject, "
                    "artifact_type, annotations, created) VALUES (?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(repo, digest) DO UPDATE SET created=excluded.created",
                    (
                        repo,
                        manifest.digest,
                        manifest.media_type,
                        manifest.size,
                        subject,
                        manifest.artifact_type,
                        annotations,
                        now,
                    ),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO hosted_children(repo, manifest, child) VALUES (?,?,?)",
                    kids,
                )
                if tag is not None:
                    db.execute(
                        "INSERT INTO hosted_tags(repo, tag, digest, updated) VALUES (?,?,?,?) "
                        "ON CONFLICT(repo, tag) DO UPDATE SET digest=excluded.digest, "
                        "updated=excluded.updated",
                        (repo, tag, manifest.digest, now),
                    )

        try:
            await self._run(work)
        except ChildGone:
            # Its file is stored already: released, so that gc removes it unless it is
            # held by then (a repeated push of the same manifest).
            await self._run(lambda: self._release_alone(manifest.digest))
            raise

    def _release_alone(self, digest: str) -> None:
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            release(db, [digest])

    async def manifest(self, repo: str, digest: str) -> HostedManifest | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT digest, media_type, size, artifact_type, annotations "
                "FROM hosted_manifests WHERE repo=? AND digest=?",
                (repo, digest),
            ).fetchone()
        )
        return _manifest(row) if row else None

    async def missing_manifests(self, repo: str, digests: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(digests))

        def work() -> list[str]:
            return [
                d
                for d in wanted
                if self._db.execute(
                    "SELECT 1 FROM hosted_manifests WHERE repo=? AND digest=?", (repo, d)
                ).fetchone()
                is None
            ]

        return await self._run(work)

    async def tag(self, repo: str, tag: str) -> str | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT digest FROM hosted_tags WHERE repo=? AND tag=?", (repo, tag)
            ).fetchone()
        )
        return str(row[0]) if row else None

    async def tags(self, repo: str) -> list[str] | None:
        """The repository's tags, sorted; None when it holds nothing at all."""

        def work() -> list[str] | None:
            db = self._db
            rows = db.execute(
                "SELECT tag FROM hosted_tags WHERE repo=? ORDER BY tag", (repo,)
            ).fetchall()
            if rows:
                return [str(r[0]) for r in rows]
            known = db.execute(
                "SELECT 1 FROM hosted_manifests WHERE repo=? UNION ALL "
                "SELECT 1 FROM hosted_blobs WHERE repo=? LIMIT 1",
                (repo, repo),
            ).fetchone()
            return [] if known else None

        return await self._run(work)

    async def delete_tag(self, repo: str, tag: str) -> bool:
        def work() -> bool:
            cur = self._db.execute("DELETE FROM hosted_tags WHERE repo=? AND tag=?", (repo, tag))
            return cur.rowcount > 0

        return await self._run(work)

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        """Remove the manifest from ``repo`` with every tag naming it; the bytes stay in
        the store until gc finds nothing referencing them."""

        def work() -> bool:
            db = self._db
            with db:
                db.execute("BEGIN")
                cur = db.execute(
                    "DELETE FROM hosted_manifests WHERE repo=? AND digest=?", (repo, digest)
                )
                db.execute("DELETE FROM hosted_tags WHERE repo=? AND digest=?", (repo, digest))
                db.execute(
                    "DELETE FROM hosted_children WHERE repo=? AND manifest=?", (repo, digest)
                )
                if cur.rowcount > 0:
                    release(db, [digest])
                return cur.rowcount > 0

        return await self._run(work)

    async def repositories(self) -> list[str]:
        """Every repository that holds something (a blob, a manifest or a tag), sorted."""
        return await self._run(lambda: repositories_sync(self._db))

    async def referrers(self, repo: str, subject: str) -> list[HostedManifest]:
        """Every manifest of ``repo`` whose ``subject`` is ``subject``, oldest first."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT digest, media_type, size, artifact_type, annotations "
                "FROM hosted_manifests WHERE repo=? AND subject=? ORDER BY created, digest",
                (repo, subject),
            ).fetchall()
        )
        return [_manifest(r) for r in rows]

    async def held(self, digests: Iterable[str]) -> set[str]:
        """Those of ``digests`` some hosted repository holds (blob or manifest)."""
        wanted = list(dict.fromkeys(digests))

        def work() -> set[str]:
            db = self._db
            return {
                d
                for d in wanted
                if db.execute(
                    "SELECT 1 FROM hosted_blobs WHERE digest=? UNION ALL "
                    "SELECT 1 FROM hosted_manifests WHERE digest=? LIMIT 1",
                    (d, d),
                ).fetchone()
                is not None
            }

        return await self._run(work)

    async def digests(self) -> set[str]:
        """Every digest a hosted repository holds (blob or manifest): never evicted."""
        return await self._run(lambda: digests_sync(self._db))


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) ``hosted.db`` with the schema in place. A rollback journal, not WAL:
    in cluster mode every replica uses this one file on the shared filesystem, and pushes
    are few beside pulls. FULL: it is the only record of pushed content."""
    return open_shared(path, _SCHEMA, synchronous="FULL")


def _holds(db: sqlite3.Connection, repo: str, digest: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM hosted_blobs WHERE repo=? AND digest=? UNION ALL "
        "SELECT 1 FROM hosted_manifests WHERE repo=? AND digest=? LIMIT 1",
        (repo, digest, repo, digest),
    ).fetchone()
    return row is not None


def release(db: sqlite3.Connection, digests: Iterable[str]) -> None:
    """``digests`` lost a row: ``pullthrough gc`` looks at their files next time (they go
    when no hosted repository holds them any more)."""
    now = time.time()
    db.executemany(
        "INSERT INTO hosted_released(digest, released) VALUES (?,?) "
        "ON CONFLICT(digest) DO UPDATE SET released=excluded.released",
        [(d, now) for d in digests],
    )


def repositories_sync(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT repo FROM hosted_blobs UNION SELECT repo FROM hosted_manifests "
        "UNION SELECT repo FROM hosted_tags ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def digests_sync(db: sqlite3.Connection) -> set[str]:
    rows = db.execute(
        "SELECT digest FROM hosted_blobs UNION SELECT digest FROM hosted_manifests"
    ).fetchall()
    return {str(r[0]) for r in rows}


def hosted_digests(path: Path) -> set[str]:
    """What ``hosted.db`` at ``path`` protects, for an operator command (blocking); empty
    when there is no such file."""
    if not path.is_file():
        return set()
    conn = connect(path)
    try:
        return digests_sync(conn)
    finally:
        conn.close()


def _manifest(row: tuple[Any, ...]) -> HostedManifest:
    annotations = None
    if row[4]:
        try:
            loaded = json.loads(row[4])
        except ValueError:
            loaded = None
        annotations = loaded if isinstance(loaded, dict) else None
    return HostedManifest(str(row[0]), str(row[1]), int(row[2]), row[3], annotations)
