"""The index: what the store holds and what it means.

It records, per digest, its size and media type; which upstreams served its bytes and which
(upstream, repository) it was fetched for, referenced by or confirmed in (the facts
``mirror.provenance`` decides reads on); tag → digest per media type; and last access times.

``IndexBackend`` is what the mirror needs from an index. ``Index`` is the one-process
implementation: SQLite in WAL mode on one dedicated thread, so calls never block the event
loop and never contend with each other. In cluster mode ``pullthrough.cluster.index``
implements the same interface in Redis. Access times are kept in memory and flushed in
batches.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pullthrough.store.pulls import PendingPulls, Pulls, by_tag
from pullthrough.store.sqlite import open_wal

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    media_type TEXT,
    created REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (upstream, repo, digest)
);
CREATE TABLE IF NOT EXISTS served (
    upstream TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (upstream, digest)
);
CREATE TABLE IF NOT EXISTS tags (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked REAL NOT NULL,
    PRIMARY KEY (upstream, repo, tag, media_type)
);
CREATE TABLE IF NOT EXISTS pins (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
);
CREATE TABLE IF NOT EXISTS pulls (
    upstream TEXT NOT NULL,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    count INTEGER NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
);
CREATE TABLE IF NOT EXISTS offline (
    upstream TEXT PRIMARY KEY,
    offline INTEGER NOT NULL,
    changed REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class BlobRecord:
    digest: str
    size: int
    media_type: str | None


@dataclass(frozen=True, slots=True)
class AgedBlob:
    """A stored digest with what eviction weighs: size, last access, and the upstreams it
    was fetched for or confirmed in (their TTLs decide when it expires)."""

    digest: str
    size: int
    last_access: float
    upstreams: tuple[str, ...]
    is_manifest: bool


@dataclass(frozen=True, slots=True)
class TagRecord:
    media_type: str
    digest: str
    checked: float


class IndexBackend(Protocol):
    """What the mirror, eviction and the operator commands need from an index."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def record(
        self,
        digest: str,
        size: int,
        *,
        media_type: str | None,
        upstream: str,
        repo: str,
        children: Iterable[str] = (),
    ) -> None: ...
    async def link(
        self, upstream: str, repo: str, digest: str, *, children: Iterable[str] = ()
    ) -> None: ...
    async def is_linked(self, upstream: str, repo: str, digest: str) -> bool: ...
    async def served_by(self, upstream: str, digest: str) -> bool: ...
    async def blob(self, digest: str) -> BlobRecord | None: ...
    async def forget(self, digest: str) -> None: ...
    async def forget_all(self, digests: Iterable[str]) -> None: ...
    async def set_tag(
        self, upstream: str, repo: str, tag: str, *, media_type: str, digest: str
    ) -> bool: ...
    async def tag(self, upstream: str, repo: str, tag: str) -> list[TagRecord]: ...
    async def drop_tag(self, upstream: str, repo: str, tag: str) -> None: ...
    async def tags(self, upstream: str, repo: str) -> list[str]: ...
    async def repositories(self, upstream: str) -> list[str]: ...
    def touch(self, digest: str) -> None: ...
    def pulled(self, upstream: str, repo: str, tag: str | None) -> None: ...
    async def flush_access(self) -> None: ...
    async def pulls(
        self, repositories: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Pulls]]: ...
    async def usage(self) -> tuple[int, int]: ...
    async def least_recent(self, limit: int, *, accessed_before: float) -> list[AgedBlob]: ...
    async def digests(self) -> set[str]: ...
    async def objects(self, digests: Iterable[str]) -> dict[str, AgedBlob]: ...
    async def adopt(self, digest: str, size: int, last_access: float) -> None: ...
    async def catalog_rows(self) -> list[tuple[str, str, str, str, int, float]]: ...
    async def usage_by_repository(self) -> list[tuple[str, str, int, int]]: ...
    async def repository_links(self) -> dict[tuple[str, str], set[str]]: ...
    async def integrity_check(self) -> str: ...
    async def offline_switches(self) -> dict[str, bool]: ...
    async def switch_offline(self, upstream: str, offline: bool) -> None: ...
    async def pins(self) -> list[tuple[str, str, str]]: ...
    async def pin(self, upstream: str, repo: str, tag: str) -> None: ...
    async def unpin(self, upstream: str, repo: str, tag: str) -> bool: ...


class Index:
    """The SQLite index: an async facade over one database file (implements IndexBackend)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index")
        self._conn: sqlite3.Connection | None = None
        self._pending_access: dict[str, float] = {}
        self._pending_pulls = PendingPulls()

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        conn = open_wal(self.path, _SCHEMA, synchronous="NORMAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] < 1:
            _served_from_links(conn)
        self._conn = conn

    async def close(self) -> None:
        await self.flush_access()
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the index thread. It must not return a cursor: one handed back to the
        event loop is finalized there, resetting its statement while the index thread uses
        the connection (sqlite3.InterfaceError "bad parameter or other API misuse")."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement on the index thread, its cursor closed there."""
        await self._run(lambda: self._db.execute(sql, params).close())

    async def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """``executemany`` on the index thread, its cursor closed there."""
        await self._run(lambda: self._db.executemany(sql, rows).close())

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "Index.open() was not awaited"
        return self._conn

    # --- blobs and links -------------------------------------------------------------

    async def record(
        self,
        digest: str,
        size: int,
        *,
        media_type: str | None,
        upstream: str,
        repo: str,
        children: Iterable[str] = (),
    ) -> None:
        """Record that ``upstream`` served ``digest`` for ``repo`` and the bytes verified;
        link it (and what it references) to (upstream, repo)."""
        now = time.time()
        linked = [digest, *children]

        def work() -> None:
            db = self._db
            with db:
                db.execute("BEGIN")
                db.execute(
                    "INSERT INTO blobs(digest, size, media_type, created, last_access) "
                    "VALUES (?,?,?,?,?) ON CONFLICT(digest) DO UPDATE SET "
                    "size=excluded.size, media_type=COALESCE(excluded.media_type, media_type), "
                    "last_access=excluded.last_access",
                    (digest, size, media_type, now, now),
                )
                db.execute(
                    "INSERT OR IGNORE INTO served(upstream, digest) VALUES (?,?)",
                    (upstream, digest),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO links(upstream, repo, digest) VALUES (?,?,?)",
                    [(upstream, repo, d) for d in linked],
                )

        await self._run(work)

    async def link(
        self, upstream: str, repo: str, digest: str, *, children: Iterable[str] = ()
    ) -> None:
        """Note that ``repo`` of ``upstream`` holds ``digest`` (the upstream confirmed it),
        and what that manifest references."""
        rows = [(upstream, repo, d) for d in (digest, *children)]
        await self._write_many(
            "INSERT OR IGNORE INTO links(upstream, repo, digest) VALUES (?,?,?)", rows
        )

    async def is_linked(self, upstream: str, repo: str, digest: str) -> bool:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT 1 FROM links WHERE upstream=? AND repo=? AND digest=?",
                (upstream, repo, digest),
            ).fetchone()
        )
        return row is not None

    async def served_by(self, upstream: str, digest: str) -> bool:
        """Whether ``upstream`` itself served the bytes of ``digest`` (verified)."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT 1 FROM served WHERE upstream=? AND digest=?", (upstream, digest)
            ).fetchone()
        )
        return row is not None

    async def blob(self, digest: str) -> BlobRecord | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT digest, size, media_type FROM blobs WHERE digest=?", (digest,)
            ).fetchone()
        )
        return BlobRecord(*row) if row else None

    async def forget(self, digest: str) -> None:
        """Drop a digest whose file is gone, so nothing trusts the entry any more."""
        await self.forget_all((digest,))

    async def forget_all(self, digests: Iterable[str]) -> None:
        """``forget`` each of ``digests`` in one transaction: a reader sees all of them
        stored or none (eviction drops a batch this way before it removes any file)."""
        rows = [(d,) for d in digests]

        def work() -> None:
            db = self._db
            with db:
                db.execute("BEGIN")
                # Every row that names the digest goes: its size and access time, who
                # served it, which repositories may read it, and the tags resolving to it.
                db.executemany("DELETE FROM blobs WHERE digest=?", rows)
                db.executemany("DELETE FROM links WHERE digest=?", rows)
                db.executemany("DELETE FROM served WHERE digest=?", rows)
                db.executemany("DELETE FROM tags WHERE digest=?", rows)

        if rows:
            await self._run(work)

    # --- tags ------------------------------------------------------------------------

    async def set_tag(
        self, upstream: str, repo: str, tag: str, *, media_type: str, digest: str
    ) -> bool:
        """Record that ``tag`` resolves to the stored ``digest``. False, and nothing
        written, when the index no longer holds ``digest`` (gc, another process, dropped
        it since the caller read it): a tag never names a manifest that is not stored."""
        now = time.time()
        written = await self._run(
            lambda: self._db.execute(
                # One statement: the check and the write see the same index, so gc cannot
                # drop the digest between them.
                "INSERT INTO tags(upstream, repo, tag, media_type, digest, checked) "
                "SELECT ?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM blobs WHERE digest=?) "
                "ON CONFLICT(upstream, repo, tag, media_type) "
                "DO UPDATE SET digest=excluded.digest, checked=excluded.checked",
                (upstream, repo, tag, media_type, digest, now, digest),
            ).rowcount
        )
        return written > 0

    async def tag(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        """Every cached resolution of a tag (one per media type), freshest first."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT media_type, digest, checked FROM tags "
                "WHERE upstream=? AND repo=? AND tag=? ORDER BY checked DESC",
                (upstream, repo, tag),
            ).fetchall()
        )
        return [TagRecord(*row) for row in rows]

    async def drop_tag(self, upstream: str, repo: str, tag: str) -> None:
        await self._write(
            "DELETE FROM tags WHERE upstream=? AND repo=? AND tag=?", (upstream, repo, tag)
        )

    async def tags(self, upstream: str, repo: str) -> list[str]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT DISTINCT tag FROM tags WHERE upstream=? AND repo=? ORDER BY tag",
                (upstream, repo),
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def repositories(self, upstream: str) -> list[str]:
        """Repositories with at least one cached manifest, in lexical order."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT DISTINCT l.repo FROM links l JOIN blobs b ON b.digest = l.digest "
                "WHERE l.upstream=? AND b.media_type IS NOT NULL ORDER BY l.repo",
                (upstream,),
            ).fetchall()
        )
        return [row[0] for row in rows]

    # --- access times ----------------------------------------------------------------

    def touch(self, digest: str) -> None:
        """Note an access now; written by the next flush, never per request."""
        self._pending_access[digest] = time.time()

    def pulled(self, upstream: str, repo: str, tag: str | None) -> None:
        """Count a pull (by ``tag``, or by digest when None); written by the next flush."""
        self._pending_pulls.note(upstream, repo, tag)

    async def flush_access(self) -> None:
        """Write the access times and pull counts noted since the last flush."""
        if self._conn is None:
            return
        if self._pending_access:
            batch, self._pending_access = self._pending_access, {}
            await self._write_many(
                "UPDATE blobs SET last_access=MAX(last_access, ?) WHERE digest=?",
                [(ts, d) for d, ts in batch.items()],
            )
        pulls = self._pending_pulls.take()
        if pulls:
            await self._write_many(
                "INSERT INTO pulls(upstream, repo, tag, count, last) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET count = count + excluded.count, "
                "last = MAX(last, excluded.last)",
                [(*at, p.count, p.last) for at, p in pulls.items()],
            )

    async def pulls(
        self, repositories: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Pulls]]:
        """Per (upstream, repository) asked for: tag (``BY_DIGEST`` for pulls by digest)
        → pulls counted so far (the last flush's; a repository never pulled is absent)."""
        wanted = list(repositories)

        def read() -> dict[tuple[str, str], dict[str, Pulls]]:
            out: dict[tuple[str, str], dict[str, Pulls]] = {}
            for upstream, repo in wanted:
                rows = self._db.execute(
                    "SELECT tag, count, last FROM pulls WHERE upstream=? AND repo=?",
                    (upstream, repo),
                ).fetchall()
                if rows:
                    out[(upstream, repo)] = by_tag(rows)
            return out

        found = await self._run(read)
        self._pending_pulls.add_to(found, wanted)
        return found

    # --- what eviction and the operator commands read -------------------------------------

    async def usage(self) -> tuple[int, int]:
        """(objects, bytes) the index knows to be stored."""
        row = await self._run(
            lambda: self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs"
            ).fetchone()
        )
        return int(row[0]), int(row[1])

    async def least_recent(self, limit: int, *, accessed_before: float) -> list[AgedBlob]:
        """Up to ``limit`` digests last accessed before ``accessed_before``, oldest first."""

        def work() -> list[AgedBlob]:
            rows = self._db.execute(
                "SELECT b.digest, b.size, b.last_access, b.media_type IS NOT NULL, "
                "GROUP_CONCAT(DISTINCT l.upstream) FROM blobs b "
                "LEFT JOIN links l ON l.digest = b.digest "
                "WHERE b.last_access < ? GROUP BY b.digest ORDER BY b.last_access LIMIT ?",
                (accessed_before, limit),
            ).fetchall()
            return [
                AgedBlob(
                    d,
                    int(size),
                    float(at),
                    tuple((ups or "").split(",")) if ups else (),
                    bool(manifest),
                )
                for d, size, at, manifest, ups in rows
            ]

        return await self._run(work)

    async def digests(self) -> set[str]:
        rows = await self._run(lambda: self._db.execute("SELECT digest FROM blobs").fetchall())
        return {row[0] for row in rows}

    async def objects(self, digests: Iterable[str]) -> dict[str, AgedBlob]:
        """Those of ``digests`` the index knows to be stored, as ``least_recent`` describes
        them: a page of the status page reads its images' objects, not the whole index."""
        wanted = sorted(set(digests))

        def work() -> dict[str, AgedBlob]:
            found: dict[str, AgedBlob] = {}
            for start in range(0, len(wanted), 500):  # below SQLite's variable limit
                chunk = wanted[start : start + 500]
                rows = self._db.execute(
                    "SELECT b.digest, b.size, b.last_access, b.media_type IS NOT NULL, "
                    "GROUP_CONCAT(DISTINCT l.upstream) FROM blobs b "
                    "LEFT JOIN links l ON l.digest = b.digest "
                    f"WHERE b.digest IN ({','.join('?' * len(chunk))}) GROUP BY b.digest",
                    chunk,
                ).fetchall()
                for d, size, at, manifest, ups in rows:
                    upstreams = tuple(ups.split(",")) if ups else ()
                    found[d] = AgedBlob(d, int(size), float(at), upstreams, bool(manifest))
            return found

        return await self._run(work) if wanted else {}

    async def adopt(self, digest: str, size: int, last_access: float) -> None:
        """Index a verified file found on disk without an entry (a crash between the rename
        and the index write), so eviction counts and can remove it."""
        await self._write(
            "INSERT OR IGNORE INTO blobs(digest, size, media_type, created, last_access) "
            "VALUES (?,?,NULL,?,?)",
            (digest, size, last_access, last_access),
        )

    async def catalog_rows(self) -> list[tuple[str, str, str, str, int, float]]:
        """(upstream, repo, tag, digest, manifest size, last access) of every cached tag."""
        return await self._run(
            lambda: self._db.execute(
                "SELECT t.upstream, t.repo, t.tag, t.digest, COALESCE(b.size, 0), "
                "COALESCE(b.last_access, 0) FROM tags t LEFT JOIN blobs b ON b.digest = t.digest "
                "ORDER BY t.upstream, t.repo, t.tag"
            ).fetchall()
        )

    async def usage_by_repository(self) -> list[tuple[str, str, int, int]]:
        """(upstream, repo, objects, bytes) of what each repository links to."""
        return await self._run(
            lambda: self._db.execute(
                "SELECT l.upstream, l.repo, COUNT(*), COALESCE(SUM(b.size), 0) FROM links l "
                "JOIN blobs b ON b.digest = l.digest GROUP BY l.upstream, l.repo "
                "ORDER BY l.upstream, l.repo"
            ).fetchall()
        )

    async def repository_links(self) -> dict[tuple[str, str], set[str]]:
        """(upstream, repo) → the stored digests linked to it."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT l.upstream, l.repo, l.digest FROM links l "
                "JOIN blobs b ON b.digest = l.digest"
            ).fetchall()
        )
        links: dict[tuple[str, str], set[str]] = {}
        for upstream, repo, digest in rows:
            links.setdefault((upstream, repo), set()).add(digest)
        return links

    async def integrity_check(self) -> str:
        row = await self._run(lambda: self._db.execute("PRAGMA integrity_check").fetchone())
        return str(row[0])

    # --- operator switches -----------------------------------------------------------

    async def offline_switches(self) -> dict[str, bool]:
        """``pullthrough offline`` as last set per upstream (an upstream not in it follows
        its config's ``offline``)."""
        rows = await self._run(
            lambda: self._db.execute("SELECT upstream, offline FROM offline").fetchall()
        )
        return {str(upstream): bool(offline) for upstream, offline in rows}

    async def pins(self) -> list[tuple[str, str, str]]:
        """``pullthrough pin`` as set: (upstream, repository, tag glob)."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT upstream, repo, tag FROM pins ORDER BY upstream, repo, tag"
            ).fetchall()
        )
        return [(str(u), str(r), str(t)) for u, r, t in rows]

    async def pin(self, upstream: str, repo: str, tag: str) -> None:
        await self._write(
            "INSERT OR IGNORE INTO pins (upstream, repo, tag) VALUES (?,?,?)", (upstream, repo, tag)
        )

    async def unpin(self, upstream: str, repo: str, tag: str) -> bool:
        def work() -> bool:
            cursor = self._db.execute(
                "DELETE FROM pins WHERE upstream=? AND repo=? AND tag=?", (upstream, repo, tag)
            )
            try:
                return cursor.rowcount > 0
            finally:
                cursor.close()

        return await self._run(work)

    async def switch_offline(self, upstream: str, offline: bool) -> None:
        await self._write(
            "INSERT INTO offline (upstream, offline, changed) VALUES (?,?,?) "
            "ON CONFLICT(upstream) DO UPDATE SET "
            "offline=excluded.offline, changed=excluded.changed",
            (upstream, int(offline), time.time()),
        )


def _served_from_links(db: sqlite3.Connection) -> None:
    """An index from before ``served`` existed knows only links. A digest linked under one
    upstream alone was brought by that upstream (a stored file came from some upstream's
    download, which linked it there); one linked under several could have been brought by
    any of them, so none is trusted with it and each serves it again when next asked."""
    with db:
        db.execute("BEGIN")
        db.execute(
            "INSERT OR IGNORE INTO served(upstream, digest) SELECT MIN(upstream), digest "
            "FROM links GROUP BY digest HAVING COUNT(DISTINCT upstream) = 1"
        )
        db.execute("PRAGMA user_version = 1")
