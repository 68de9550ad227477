"""The index in Redis (cluster mode): the same interface as the SQLite one, shared by every
replica, so eviction sees the whole cluster's sizes and access pattern.

Keys (all under ``pullthrough:``; ``U|R`` is an upstream and a repository):

- ``blob|D`` hash: size, media_type (manifests only), created
- ``access`` sorted set: digest → last access (also the list of stored digests)
- ``bytes``: total size of the stored digests
- ``manifests`` set: digests that are manifests (for the catalog)
- ``links|U|R`` set of digests; ``linkedby|D`` set of ``U|R`` (to unlink on removal)
- ``servedby|D`` set of the upstreams that served D's bytes themselves
- ``repos|U`` set of repositories linked on U; ``upstreams`` set of upstream names
- ``tag|U|R|T`` hash: media type → ``digest checked``; ``tags|U|R`` set of tags;
  ``tagged`` set of ``U|R`` with tags; ``tagsof|D`` set of ``U|R|T`` pointing at D
- ``offline`` hash: upstream → ``1`` or ``0`` as ``pullthrough offline`` last set it
- ``pins`` set of ``U|R|T`` (T a tag glob) as ``pullthrough pin`` set them

Writes that must agree with each other (sizes and totals, removal with its links and
tags) are Lua scripts. When Redis is unreachable the index degrades instead of failing
pulls: links and tag resolutions this replica read or wrote recently are answered from
memory (so cached content is served even if the upstream is down too), any other link
counts as absent (the upstream then confirms it, as for a repository never seen) and any
other tag as not cached; writes are skipped, usage is the last figure read, and access
times wait in memory for the next flush.

Sizes and tag records read back are checked (a malformed one is ignored with a warning,
never a failed request). The links and ``servedby`` sets are taken as written: they are
what ``mirror.provenance`` decides on, so whoever can write to Redis decides who may read
what is cached; Redis must be protected (a password, a private network).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

from pullthrough.cluster.connection import PREFIX, Coordination, RedisUnavailable, key
from pullthrough.errors import RegistryError
from pullthrough.reference import parse_digest
from pullthrough.store.index import AgedBlob, BlobRecord, TagRecord
from pullthrough.store.pulls import PendingPulls, Pulls, by_tag

log = logging.getLogger(__name__)

T = TypeVar("T")

# Access times waiting for Redis are capped, so an outage cannot grow memory without end.
MAX_PENDING_ACCESS = 100_000
# Links and tags remembered for when Redis cannot answer.
REMEMBERED = 50_000

_RECORD = """
local p, d, size, mt, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local bk = p .. 'blob|' .. d
local old = redis.call('HGET', bk, 'size')
if old then
  redis.call('INCRBY', p .. 'bytes', size - tonumber(old))
else
  redis.call('INCRBY', p .. 'bytes', size)
  redis.call('HSET', bk, 'created', now)
end
redis.call('HSET', bk, 'size', size)
if mt ~= '' then
  redis.call('HSET', bk, 'media_type', mt)
  redis.call('SADD', p .. 'manifests', d)
end
redis.call('ZADD', p .. 'access', now, d)
local ur = ARGV[6] .. '|' .. ARGV[7]
redis.call('SADD', p .. 'servedby|' .. d, ARGV[6])
redis.call('SADD', p .. 'upstreams', ARGV[6])
redis.call('SADD', p .. 'repos|' .. ARGV[6], ARGV[7])
for i = 8, #ARGV do
  redis.call('SADD', p .. 'links|' .. ur, ARGV[i])
  redis.call('SADD', p .. 'linkedby|' .. ARGV[i], ur)
end
return 1
"""

_FORGET = """
local p, d = ARGV[1], ARGV[2]
local bk = p .. 'blob|' .. d
local size = redis.call('HGET', bk, 'size')
if size then redis.call('DECRBY', p .. 'bytes', tonumber(size)) end
redis.call('DEL', bk)
redis.call('ZREM', p .. 'access', d)
redis.call('SREM', p .. 'manifests', d)
for _, ur in ipairs(redis.call('SMEMBERS', p .. 'linkedby|' .. d)) do
  redis.call('SREM', p .. 'links|' .. ur, d)
end
redis.call('DEL', p .. 'linkedby|' .. d)
redis.call('DEL', p .. 'servedby|' .. d)
for _, urt in ipairs(redis.call('SMEMBERS', p .. 'tagsof|' .. d)) do
  local tk = p .. 'tag|' .. urt
  local entries = redis.call('HGETALL', tk)
  for i = 1, #entries, 2 do
    if string.sub(entries[i + 1], 1, #d + 1) == d .. ' ' then redis.call('HDEL', tk, entries[i]) end
  end
  if redis.call('EXISTS', tk) == 0 then
    local ur, t = string.match(urt, '^(.*)|([^|]*)$')
    redis.call('SREM', p .. 'tags|' .. ur, t)
  end
end
redis.call('DEL', p .. 'tagsof|' .. d)
return 1
"""

_ADOPT = """
local p, d = ARGV[1], ARGV[2]
local bk = p .. 'blob|' .. d
if redis.call('EXISTS', bk) == 1 then return 0 end
redis.call('HSET', bk, 'size', ARGV[3], 'created', ARGV[4])
redis.call('ZADD', p .. 'access', ARGV[4], d)
redis.call('INCRBY', p .. 'bytes', tonumber(ARGV[3]))
return 1
"""


class RedisIndex:
    """The shared index (implements ``pullthrough.store.index.IndexBackend``)."""

    def __init__(self, coordination: Coordination) -> None:
        self._c = coordination
        client = coordination.client
        self._record = client.register_script(_RECORD)
        self._forget = client.register_script(_FORGET)
        self._adopt = client.register_script(_ADOPT)
        self._pending_access: dict[str, float] = {}
        self._pending_pulls = PendingPulls()
        self._usage = (0, 0)
        self._links: _Recent[tuple[str, str, str], bool] = _Recent(REMEMBERED)
        self._served: _Recent[tuple[str, str], bool] = _Recent(REMEMBERED)
        self._tags: _Recent[tuple[str, str, str], list[TagRecord]] = _Recent(REMEMBERED)
        self._offline: dict[str, bool] = {}  # as last read: kept while Redis is away

    async def _call(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        return await self._c.call(operation)

    async def _soft(self, what: str, operation: Callable[[Any], Awaitable[T]], default: T) -> T:
        """``operation``, or ``default`` when Redis cannot answer (never fails a pull)."""
        try:
            return await self._c.call(operation)
        except RedisUnavailable:
            log.debug("index %s skipped: redis unreachable", what)
            return default

    async def open(self) -> None:
        await self._c.ping()

    async def close(self) -> None:
        await self.flush_access()

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
        args: list[str | int | float] = [
            PREFIX,
            digest,
            size,
            media_type or "",
            time.time(),
            upstream,
            repo,
            digest,
        ]
        args.extend(children)
        for linked in args[7:]:
            self._links.put((upstream, repo, str(linked)), True)
        self._served.put((upstream, digest), True)
        await self._soft("record", lambda r: self._record(args=args), None)

    async def link(
        self, upstream: str, repo: str, digest: str, *, children: Iterable[str] = ()
    ) -> None:
        """Note that ``repo`` of ``upstream`` holds ``digest`` (the upstream confirmed it),
        and what that manifest references."""
        linked = (digest, *children)

        async def work(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.sadd(key("links", upstream, repo), *linked)
                for d in linked:
                    pipe.sadd(key("linkedby", d), f"{upstream}|{repo}")
                pipe.sadd(key("repos", upstream), repo)
                pipe.sadd(key("upstreams"), upstream)
                await pipe.execute()

        for d in linked:
            self._links.put((upstream, repo, d), True)
        await self._soft("link", work, None)

    async def served_by(self, upstream: str, digest: str) -> bool:
        """Whether ``upstream`` itself served the bytes of ``digest`` (verified)."""
        return await self._member(
            self._served, (upstream, digest), key("servedby", digest), upstream
        )

    async def is_linked(self, upstream: str, repo: str, digest: str) -> bool:
        return await self._member(
            self._links, (upstream, repo, digest), key("links", upstream, repo), digest
        )

    async def _member(
        self, memo: _Recent[K, bool], remembered: K, set_key: str, member: str
    ) -> bool:
        """Whether ``member`` is in the Redis set ``set_key``, remembered in ``memo`` for
        when Redis is down. Unknown then counts as no: the caller asks the upstream again
        (or fetches from it), which is safe."""
        try:
            found = bool(await self._call(lambda r: r.sismember(set_key, member)))
        except RedisUnavailable:
            return memo.get(remembered, False)
        if found:
            memo.put(remembered, True)
        else:
            memo.drop(remembered)
        return found

    async def blob(self, digest: str) -> BlobRecord | None:
        size, media_type = await self._soft(
            "blob lookup",
            lambda r: r.hmget(key("blob", digest), ["size", "media_type"]),
            [None, None],
        )
        if size is None:
            return None
        count = _count(size)
        if count is None:
            log.warning("ignored a malformed size in redis for %s: %r", digest, size[:30])
            return None
        return BlobRecord(digest, count, media_type or None)

    async def forget(self, digest: str) -> None:
        """Drop a digest whose file is gone, so nothing trusts the entry any more."""
        self._links.clear()  # rare (eviction): simpler than finding the digest's entries
        self._served.clear()
        self._tags.clear()
        await self._soft("forget", lambda r: self._forget(args=[PREFIX, digest]), None)

    async def forget_all(self, digests: Iterable[str]) -> None:
        """``forget`` each of ``digests`` (one script call each: Redis runs each one
        atomically, but not the batch as a whole)."""
        for digest in digests:
            await self.forget(digest)

    # --- tags ------------------------------------------------------------------------

    async def set_tag(
        self, upstream: str, repo: str, tag: str, *, media_type: str, digest: str
    ) -> bool:
        """Record that ``tag`` resolves to ``digest``; always True here (unlike the SQLite
        index, the write does not check that the digest is still indexed)."""

        async def work(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hset(key("tag", upstream, repo, tag), media_type, f"{digest} {time.time()}")
                pipe.sadd(key("tags", upstream, repo), tag)
                pipe.sadd(key("tagged"), f"{upstream}|{repo}")
                pipe.sadd(key("tagsof", digest), f"{upstream}|{repo}|{tag}")
                await pipe.execute()

        remembered = (upstream, repo, tag)
        records = [r for r in self._tags.get(remembered, []) if r.media_type != media_type]
        self._tags.put(remembered, [TagRecord(media_type, digest, time.time()), *records])
        await self._soft("tag write", work, None)
        return True

    async def tag(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        """Every cached resolution of a tag (one per media type), freshest first."""
        remembered = (upstream, repo, tag)
        try:
            entries = await self._call(lambda r: r.hgetall(key("tag", upstream, repo, tag)))
        except RedisUnavailable:
            # What this replica last knew: enough to serve the tag stale if the upstream fails.
            return self._tags.get(remembered, [])
        records = []
        for media_type, value in entries.items():
            digest, _, checked = value.partition(" ")
            record = _tag_record(media_type, digest, checked)
            if record is None:
                log.warning(
                    "ignored a malformed tag record in redis for %s/%s:%s", upstream, repo, tag
                )
                continue
            records.append(record)
        records.sort(key=lambda r: r.checked, reverse=True)
        self._tags.put(remembered, records)
        return records

    async def drop_tag(self, upstream: str, repo: str, tag: str) -> None:
        self._tags.drop((upstream, repo, tag))

        async def work(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(key("tag", upstream, repo, tag))
                pipe.srem(key("tags", upstream, repo), tag)
                await pipe.execute()

        await self._soft("tag removal", work, None)

    async def tags(self, upstream: str, repo: str) -> list[str]:
        found: set[str] = await self._soft(
            "tag list",
            lambda r: r.smembers(key("tags", upstream, repo)),
            set(),
        )
        return sorted(found)

    async def repositories(self, upstream: str) -> list[str]:
        """Repositories with at least one cached manifest, in lexical order."""

        async def work(r: Any) -> list[str]:
            repos = sorted(await r.smembers(key("repos", upstream)))
            async with r.pipeline(transaction=False) as pipe:
                for repo in repos:
                    pipe.sintercard(2, [key("links", upstream, repo), key("manifests")], limit=1)
                counts = await pipe.execute()
            return [repo for repo, n in zip(repos, counts, strict=True) if n]

        return await self._soft("catalog", work, [])

    # --- access times ----------------------------------------------------------------

    def touch(self, digest: str) -> None:
        """Note an access now; written by the next flush, never per request."""
        if len(self._pending_access) < MAX_PENDING_ACCESS or digest in self._pending_access:
            self._pending_access[digest] = time.time()

    def pulled(self, upstream: str, repo: str, tag: str | None) -> None:
        """Count a pull (by ``tag``, or by digest when None); written by the next flush."""
        self._pending_pulls.note(upstream, repo, tag)

    async def flush_access(self) -> None:
        """Write the access times and pull counts noted since the last flush."""
        await self._flush_pulls()
        if not self._pending_access:
            return
        batch, self._pending_access = self._pending_access, {}
        try:
            # XX: only digests still stored; GT: never move an access time backwards.
            await self._call(lambda r: r.zadd(key("access"), batch, xx=True, gt=True))
        except RedisUnavailable:
            for digest, at in batch.items():  # keep them for the next flush
                self._pending_access[digest] = max(at, self._pending_access.get(digest, 0.0))

    async def _flush_pulls(self) -> None:
        batch = self._pending_pulls.take()
        if not batch:
            return

        async def work(r: Any) -> None:
            # Counts add up across replicas (HINCRBY); the last pull time only moves
            # forward (ZADD GT), whichever replica writes last.
            async with r.pipeline(transaction=False) as pipe:
                for (upstream, repo, tag), pulls in batch.items():
                    pipe.hincrby(key("pulls", upstream, repo), tag, pulls.count)
                    pipe.zadd(key("pulled", upstream, repo), {tag: pulls.last}, gt=True)
                await pipe.execute()

        try:
            await self._call(work)
        except RedisUnavailable:
            self._pending_pulls.give_back(batch)

    async def pulls(
        self, repositories: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Pulls]]:
        """Per (upstream, repository) asked for: tag (``BY_DIGEST`` for pulls by digest)
        → pulls counted so far; nothing while Redis is unreachable (never fails a page)."""
        wanted = list(repositories)

        async def work(r: Any) -> dict[tuple[str, str], dict[str, Pulls]]:
            async with r.pipeline(transaction=False) as pipe:
                for upstream, repo in wanted:
                    pipe.hgetall(key("pulls", upstream, repo))
                    pipe.zrange(key("pulled", upstream, repo), 0, -1, withscores=True)
                answers = await pipe.execute()
            out: dict[tuple[str, str], dict[str, Pulls]] = {}
            for i, name in enumerate(wanted):
                counts, lasts = answers[2 * i], dict(answers[2 * i + 1])
                rows = [(tag, _count(n) or 0, _time(lasts.get(tag))) for tag, n in counts.items()]
                if rows:
                    out[name] = by_tag(rows)
            return out

        none: dict[tuple[str, str], dict[str, Pulls]] = {}
        found = await self._soft("pulls", work, none)
        self._pending_pulls.add_to(found, wanted)
        return found

    # --- what eviction and the operator commands read -------------------------------------

    async def usage(self) -> tuple[int, int]:
        """(objects, bytes) the index knows to be stored; the last figures read while
        Redis is unreachable (so a health check does not take every replica out)."""

        async def work(r: Any) -> tuple[int, int]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.zcard(key("access"))
                pipe.get(key("bytes"))
                objects, stored = await pipe.execute()
            return int(objects), _count(stored or "0") or 0

        self._usage = await self._soft("usage", work, self._usage)
        return self._usage

    async def least_recent(self, limit: int, *, accessed_before: float) -> list[AgedBlob]:
        """Up to ``limit`` digests last accessed before ``accessed_before``, oldest first.
        Raises RedisUnavailable (the sweeper skips the pass)."""

        async def work(r: Any) -> list[AgedBlob]:
            bound = "+inf" if accessed_before == float("inf") else f"({accessed_before}"
            rows: list[tuple[str, float]] = await r.zrangebyscore(
                key("access"), "-inf", bound, start=0, num=limit, withscores=True
            )
            async with r.pipeline(transaction=False) as pipe:
                for digest, _ in rows:
                    pipe.hmget(key("blob", digest), ["size", "media_type"])
                    pipe.smembers(key("linkedby", digest))
                details = await pipe.execute()
            found = []
            for i, (digest, at) in enumerate(rows):
                (size, media_type), linked = details[2 * i], details[2 * i + 1]
                upstreams = tuple(sorted({ur.partition("|")[0] for ur in linked}))
                found.append(
                    AgedBlob(
                        digest, _count(size or "0") or 0, float(at), upstreams, bool(media_type)
                    )
                )
            return found

        return await self._call(work)

    async def objects(self, digests: Iterable[str]) -> dict[str, AgedBlob]:
        """Those of ``digests`` the shared index knows to be stored. Raises
        RedisUnavailable."""
        wanted = sorted(set(digests))

        async def work(r: Any) -> dict[str, AgedBlob]:
            async with r.pipeline(transaction=False) as pipe:
                for digest in wanted:
                    pipe.zscore(key("access"), digest)
                    pipe.hmget(key("blob", digest), ["size", "media_type"])
                    pipe.smembers(key("linkedby", digest))
                details = await pipe.execute()
            found = {}
            for i, digest in enumerate(wanted):
                at, (size, media_type), linked = details[3 * i : 3 * i + 3]
                if at is None:
                    continue  # not stored (the access set is what least_recent lists)
                upstreams = tuple(sorted({ur.partition("|")[0] for ur in linked}))
                found[digest] = AgedBlob(
                    digest, _count(size or "0") or 0, float(at), upstreams, bool(media_type)
                )
            return found

        return await self._call(work) if wanted else {}

    async def digests(self) -> set[str]:
        members: list[str] = await self._call(lambda r: r.zrange(key("access"), 0, -1))
        return set(members)

    async def adopt(self, digest: str, size: int, last_access: float) -> None:
        """Index a verified file found on disk without an entry, so eviction counts it."""
        await self._soft(
            "adopt", lambda r: self._adopt(args=[PREFIX, digest, size, last_access]), None
        )

    async def catalog_rows(self) -> list[tuple[str, str, str, str, int, float]]:
        """(upstream, repo, tag, digest, manifest size, last access) of every cached tag."""

        async def work(r: Any) -> list[tuple[str, str, str, str, int, float]]:
            rows = []
            for ur in sorted(await r.smembers(key("tagged"))):
                upstream, _, repo = ur.partition("|")
                for tag in sorted(await r.smembers(key("tags", upstream, repo))):
                    entries = await r.hgetall(key("tag", upstream, repo, tag))
                    for value in entries.values():
                        digest = value.partition(" ")[0]
                        size = await r.hget(key("blob", digest), "size")
                        at = await r.zscore(key("access"), digest)
                        count = _count(size or "0") or 0
                        rows.append((upstream, repo, tag, digest, count, float(at or 0)))
            return rows

        return await self._call(work)

    async def usage_by_repository(self) -> list[tuple[str, str, int, int]]:
        """(upstream, repo, objects, bytes) of what each repository links to."""
        return [
            (upstream, repo, len(sizes), sum(sizes.values()))
            for (upstream, repo), sizes in sorted((await self._linked_sizes()).items())
        ]

    async def repository_links(self) -> dict[tuple[str, str], set[str]]:
        """(upstream, repo) → the stored digests linked to it."""
        return {name: set(sizes) for name, sizes in (await self._linked_sizes()).items()}

    async def _linked_sizes(self) -> dict[tuple[str, str], dict[str, int]]:
        """(upstream, repo) → {digest: size} of the stored objects linked to it."""

        async def work(r: Any) -> dict[tuple[str, str], dict[str, int]]:
            found: dict[tuple[str, str], dict[str, int]] = {}
            for upstream in await r.smembers(key("upstreams")):
                for repo in await r.smembers(key("repos", upstream)):
                    digests = list(await r.smembers(key("links", upstream, repo)))
                    async with r.pipeline(transaction=False) as pipe:
                        for digest in digests:
                            pipe.hget(key("blob", digest), "size")
                        sizes = await pipe.execute()
                    pairs = zip(digests, sizes, strict=True)
                    stored = {d: _count(s) or 0 for d, s in pairs if s is not None}
                    if stored:
                        found[(upstream, repo)] = stored
            return found

        return await self._call(work)

    async def integrity_check(self) -> str:
        return "ok" if await self._c.ping() else "redis unreachable"

    # --- operator switches -----------------------------------------------------------

    async def offline_switches(self) -> dict[str, bool]:
        """``pullthrough offline`` as last set per upstream, for every replica; while Redis
        is away, as last read (a switch must not flip because Redis is gone)."""
        found: dict[str, str] | None = await self._soft(
            "offline switches", lambda r: r.hgetall(key("offline")), None
        )
        if found is not None:
            # Untrusted: anything but "1" or "0" is no switch at all.
            self._offline = {
                str(name): value == "1" for name, value in found.items() if value in ("0", "1")
            }
        return dict(self._offline)

    async def pins(self) -> list[tuple[str, str, str]]:
        """``pullthrough pin`` as set. Read strictly (an exception when Redis is away):
        eviction must not take an unreadable pin list for an empty one."""
        found: set[str] = await self._call(lambda r: r.smembers(key("pins")))
        out = []
        for member in sorted(found):
            parts = str(member).split("|")
            if len(parts) == 3 and all(parts):
                out.append((parts[0], parts[1], parts[2]))
            else:
                log.warning("ignoring a malformed pin in redis: %r", str(member)[:200])
        return out

    async def pin(self, upstream: str, repo: str, tag: str) -> None:
        await self._call(lambda r: r.sadd(key("pins"), f"{upstream}|{repo}|{tag}"))

    async def unpin(self, upstream: str, repo: str, tag: str) -> bool:
        removed = await self._call(lambda r: r.srem(key("pins"), f"{upstream}|{repo}|{tag}"))
        return bool(removed)

    async def switch_offline(self, upstream: str, offline: bool) -> None:
        await self._call(lambda r: r.hset(key("offline"), upstream, "1" if offline else "0"))


def _count(text: str) -> int | None:
    """A size or total as the index writes it (decimal digits); None for anything else:
    what Redis holds is untrusted, and a bad value must not fail a request."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    return int(text)


def _time(value: object) -> float:
    """A time as the index writes it (seconds since the epoch); 0 for anything else."""
    at = value if isinstance(value, float) else 0.0
    return at if math.isfinite(at) and at >= 0 else 0.0


def _tag_record(media_type: str, digest: str, checked: str) -> TagRecord | None:
    """A tag's cached resolution as ``set_tag`` writes it; None when it is not one."""
    try:
        parse_digest(digest)
        at = float(checked or 0)
    except (RegistryError, ValueError):
        return None
    if not math.isfinite(at) or not media_type or len(media_type) > 255:
        return None
    return TagRecord(media_type, digest, at)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Recent(OrderedDict[K, V]):
    """At most ``limit`` entries; the least recently put goes first."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, name: K, value: V) -> None:
        self[name] = value
        self.move_to_end(name)
        if len(self) > self.limit:
            self.popitem(last=False)

    def drop(self, name: K) -> None:
        self.pop(name, None)
