"""``mirror.sync``: repositories refreshed on a schedule.

Every ``interval`` a run lists the repository's tags upstream (paged), keeps those the
entry's ``tags`` matches and ``mirror.policy`` allows, resolves each and fetches what is
missing through the walk ``pullthrough warm`` uses (``mirror.warming.Warmer`` over the
mirror's own single-flight fetches), so a sync and a pull of the same image share one
download. A run never contacts an upstream that is switched offline.

Docker Hub counts manifest GETs against a quota and says what is left in
``ratelimit-remaining``; HEADs are free. A run asks with a HEAD first where a GET could be
spared, and stops for its upstream before a GET would take ``ratelimit-remaining`` below
``mirror.sync_quota_reserve``: what is left stays for clients' pulls. After a 429 it waits
out Retry-After (the client refuses to ask earlier anyway) and tries again, a bounded
number of times.

In cluster mode a run is claimed in Redis first (``cluster.sync_claims``): one replica
runs each sync per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TextIO, cast

import aiohttp

from pullthrough.config.model import SyncEntry
from pullthrough.errors import Denied, RegistryError, TooManyRequests
from pullthrough.manifest import KNOWN_TYPES, upstream_accept
from pullthrough.mirror.provenance import Kind
from pullthrough.mirror.route import Route
from pullthrough.mirror.warm_images import (
    Got,
    ImageRef,
    Pulled,
    WarmError,
    parse_platform,
)
from pullthrough.mirror.warm_sources import StoreSource
from pullthrough.mirror.warming import Warmer
from pullthrough.progress import Reporter
from pullthrough.reference import Digest, is_digest, parse_digest
from pullthrough.semver import parse_range
from pullthrough.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from pullthrough.mirror.service import Mirror

log = logging.getLogger(__name__)

# Tags asked for per page of the upstream's list (the registry may send fewer).
PAGE_SIZE = 100
# A repository with more tags than this is listed this far: the list is bounded.
MAX_PAGES = 1000
# Tries of one tag when the upstream answers 429; between them Retry-After is waited out.
MAX_ATTEMPTS = 3
# A Retry-After longer than this ends the run for that upstream: the next run tries again.
MAX_BACKOFF = 300.0
# How long one image of a run may take without progress (as ``warm --timeout``).
STALL_TIMEOUT = 60.0


class QuotaReached(Exception):
    """A GET would take the upstream's pull quota below the reserve."""


class Claims(Protocol):
    """Who runs a sync now: one replica per entry and interval in cluster mode."""

    async def claim(self, name: str, seconds: float) -> bool:
        """True if this process may run ``name`` now (nobody else will for ``seconds``)."""
        ...

    def holding(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Keep the claim alive while a run lasts longer than it was claimed for."""
        ...


class LocalClaims:
    """One process: every claim is granted (the scheduler never overlaps an entry's runs)."""

    async def claim(self, name: str, seconds: float) -> bool:
        return True

    @contextlib.asynccontextmanager
    async def holding(self, name: str) -> AsyncIterator[None]:
        yield


@dataclass
class SyncRun:
    """What one run of one entry did."""

    entry: SyncEntry
    dry_run: bool = False
    listed: int = 0  # tags the upstream lists
    matched: list[str] = field(default_factory=list)  # matching and allowed by policy
    denied: list[str] = field(default_factory=list)  # matching, refused by mirror.policy
    synced: list[str] = field(default_factory=list)  # up to date now (fetched, or was)
    would_fetch: list[str] = field(default_factory=list)  # dry run: not stored yet
    failed: list[str] = field(default_factory=list)
    fetched_bytes: int = 0  # blobs this run's fetches brought (each counted once)
    fetched: set[str] = field(default_factory=set)  # their digests
    stopped: str | None = None  # why the run ended before every matched tag was done
    error: str | None = None  # the run failed as a whole (the tag list could not be read)

    @property
    def label(self) -> str:
        return f"{self.entry.upstream}/{self.entry.repository}"


def claim_name(entry: SyncEntry) -> str:
    """The same on every replica with the same entry, and different for another entry."""
    what = "\n".join((entry.tags, ",".join(entry.platforms), f"{entry.interval:g}"))
    return "|".join(
        (entry.upstream, entry.repository, hashlib.sha256(what.encode()).hexdigest()[:16])
    )


def tag_matcher(entry: SyncEntry) -> Callable[[str], bool]:
    """``entry.tags`` as a predicate: a regular expression searched in the tag (anchor it
    with ^ and $), or a semver range."""
    if entry.semver:
        return parse_range(entry.tags).matches
    pattern = re.compile(entry.tags)
    return lambda tag: pattern.search(tag) is not None


class Quota:
    """One upstream's pull quota as a sync sees it. GETs promised but not yet answered
    count as spent, so tags in parallel cannot together go below the reserve; and a tag
    that finds no room waits for those answers before it concludes the quota is spent
    (they may leave room, or not)."""

    def __init__(self, upstream: UpstreamClient, reserve: int) -> None:
        self.upstream = upstream
        self.reserve = reserve
        self.pending = 0
        self._answered = asyncio.Condition()

    def begin_run(self) -> None:
        """Read the quota afresh (it is refilled when its window ends)."""
        if self.pending == 0:
            self.upstream.rate_limit.lowest = self.upstream.rate_limit.remaining

    def may_spend(self) -> bool:
        lowest = self.upstream.rate_limit.lowest
        return lowest is None or lowest - self.pending - 1 >= self.reserve

    async def take(self) -> bool:
        """Room for one GET (count it as promised; ``give_back`` when answered), or
        False when there is none once every promised GET has been answered."""
        async with self._answered:
            await self._answered.wait_for(lambda: self.pending == 0 or self.may_spend())
            if not self.may_spend():
                return False
            self.pending += 1
            return True

    async def give_back(self) -> None:
        async with self._answered:
            self.pending -= 1
            self._answered.notify_all()

    def said(self) -> str:
        return (
            f"upstream {self.upstream.name} has {self.upstream.rate_limit.remaining} pulls "
            f"left, mirror.sync_quota_reserve keeps {self.reserve} for clients"
        )


class Syncer:
    """Runs ``mirror.sync`` entries: once (``run_all``, ``pullthrough sync``) or on their
    schedule (``run_forever``, the server)."""

    def __init__(self, mirror: Mirror, *, claims: Claims | None = None) -> None:
        self.mirror = mirror
        self.config = mirror.config
        self.claims: Claims = claims or LocalClaims()
        self._quotas: dict[str, Quota] = {}
        self._jobs: dict[str, asyncio.Semaphore] = {}

    # --- the schedule ----------------------------------------------------------------

    async def run_forever(self) -> None:
        """Each entry runs when its interval has passed since its last run here, if its
        claim is granted; an entry's runs never overlap."""
        entries = self.config.sync
        if not entries:
            return
        poll = min(max(min(e.interval for e in entries) / 10, 0.2), 30.0)
        due = dict.fromkeys(range(len(entries)), 0.0)
        running: dict[int, asyncio.Task[SyncRun | None]] = {}
        try:
            while True:
                now = time.monotonic()
                for i, entry in enumerate(entries):
                    if i in running and not running[i].done():
                        continue
                    running.pop(i, None)
                    if now < due[i]:
                        continue
                    due[i] = now + poll
                    if await self._claim(entry):
                        due[i] = now + entry.interval
                        running[i] = asyncio.get_running_loop().create_task(self._scheduled(entry))
                await asyncio.sleep(poll)
        finally:
            for task in running.values():
                task.cancel()
            for task in running.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _claim(self, entry: SyncEntry) -> bool:
        try:
            return await self.claims.claim(claim_name(entry), entry.interval)
        except Exception:  # no claim, no run: better one run late than two at once
            log.exception("sync %s: claiming the run failed", entry.key)
            return False

    async def _scheduled(self, entry: SyncEntry) -> SyncRun | None:
        try:
            async with self.claims.holding(claim_name(entry)):
                return await self.run(entry)
        except Exception:
            log.exception("sync %s failed", entry.key)
            self.mirror.metrics.sync_errors.labels(f"{entry.upstream}/{entry.repository}").inc()
            return None

    # --- one run ---------------------------------------------------------------------

    async def run_all(
        self, *, dry_run: bool = False, reporter: Reporter | None = None
    ) -> list[SyncRun]:
        """Every entry once, now (entries of one upstream share its bounds)."""
        return list(
            await asyncio.gather(
                *(self.run(e, dry_run=dry_run, reporter=reporter) for e in self.config.sync)
            )
        )

    async def run(
        self, entry: SyncEntry, *, dry_run: bool = False, reporter: Reporter | None = None
    ) -> SyncRun:
        """One run of ``entry``: list, match, and fetch what is missing (nothing when
        ``dry_run``: then only HEADs say what would be fetched)."""
        run = SyncRun(entry, dry_run=dry_run)
        started = time.monotonic()
        upstream = self.mirror.upstreams.named(entry.upstream)
        metrics = self.mirror.metrics
        try:
            if upstream is None:
                run.stopped = f"upstream {entry.upstream} is not configured"
            elif upstream.offline:
                run.stopped = f"upstream {entry.upstream} is offline"
            else:
                await self._run(run, upstream, reporter)
        except (RegistryError, aiohttp.ClientError, OSError) as exc:
            # The tag list (or the quota's HEAD) failed: nothing to go on; the next run
            # tries again.
            run.error = f"listing the tags failed: {getattr(exc, 'message', None) or exc}"
            run.stopped = run.error
            metrics.sync_errors.labels(run.label).inc()
        finally:
            label = run.label
            if not dry_run:
                metrics.sync_last_run.labels(label).set(time.time())
                metrics.sync_tags.labels(label).inc(len(run.synced))
                metrics.sync_bytes.labels(label).inc(run.fetched_bytes)
                metrics.sync_errors.labels(label).inc(len(run.failed))
            log.info(
                "sync %s %s: %d tags listed, %d matching, %d %s, %d failed, %d bytes "
                "fetched, %.1fs%s",
                entry.key,
                label,
                run.listed,
                len(run.matched),
                len(run.would_fetch if dry_run else run.synced),
                "to fetch" if dry_run else "up to date",
                len(run.failed),
                run.fetched_bytes,
                time.monotonic() - started,
                f"; stopped: {run.stopped}" if run.stopped else "",
            )
        return run

    async def _run(self, run: SyncRun, upstream: UpstreamClient, reporter: Reporter | None) -> None:
        entry = run.entry
        policy = self.mirror.policy
        name = entry.repository
        try:
            # A denied repository costs the upstream nothing, not even its tag list.
            policy.check_repository(upstream.name, entry.repository, name)
        except Denied as exc:
            run.stopped = f"mirror.policy: {exc.message}"
            return
        tags = await self._list(upstream, entry.repository)
        run.listed = len(tags)
        matches = tag_matcher(entry)
        for tag in tags:
            if not matches(tag):
                continue
            if policy.tag_allowed(upstream.name, entry.repository, tag):
                run.matched.append(tag)
            else:
                run.denied.append(tag)
        if run.dry_run:
            for tag in run.matched:
                try:
                    stored = await self.stored_for(upstream, entry.repository, tag, named=False)
                except RegistryError as exc:
                    log.warning("sync %s: %s:%s: %s", entry.key, entry.repository, tag, exc)
                    run.failed.append(tag)
                    continue
                (run.synced if stored else run.would_fetch).append(tag)
            return
        self.quota(upstream).begin_run()
        if run.matched and upstream.rate_limit.remaining is None:
            # Learn the quota before tags go in parallel (Docker Hub says it on a HEAD,
            # which is free): unknown, the first GETs could not be held to the reserve.
            with contextlib.suppress(RegistryError):
                await upstream.head_manifest(
                    entry.repository, run.matched[0], upstream_accept(KNOWN_TYPES)
                )
        warmer = Warmer(
            _SyncSource(self, upstream, run),
            # In the server the walk's lines go to the log: no terminal sees them.
            reporter or Reporter(tty=False, out=cast(TextIO, _LogLines())),
            platforms=[parse_platform(p) for p in entry.platforms],
            jobs=self.config.sync_jobs,
        )
        await asyncio.gather(*(self._tag(run, upstream, warmer, tag) for tag in run.matched))

    async def _list(self, upstream: UpstreamClient, repo: str) -> list[str]:
        """Every tag the upstream lists for ``repo``, page by page (each page from the
        last tag of the one before, as the Link header's ``last`` says)."""
        tags: list[str] = []
        last: str | None = None
        for _ in range(MAX_PAGES):
            page = await upstream.tags(repo, PAGE_SIZE, last)
            if page is None:
                return tags  # the repository does not exist upstream
            found, more = page
            tags.extend(found)
            if not more or not found or found[-1] == last:
                return tags
            last = found[-1]
        log.warning(
            "sync: %s lists more than %d pages of tags; the rest is not synced", repo, MAX_PAGES
        )
        return tags

    async def _tag(self, run: SyncRun, upstream: UpstreamClient, warmer: Warmer, tag: str) -> None:
        entry = run.entry
        ref = ImageRef(
            f"{upstream.name}/{entry.repository}:{tag}", upstream.name, entry.repository, tag, None
        )
        jobs = self._jobs.setdefault(upstream.name, asyncio.Semaphore(self.config.sync_jobs))
        async with jobs:
            for _ in range(MAX_ATTEMPTS):
                if run.stopped is not None:
                    return
                if upstream.offline:
                    run.stopped = f"upstream {upstream.name} went offline"
                    return
                try:
                    if await warmer.image(ref):
                        run.synced.append(tag)
                        return
                except QuotaReached as exc:
                    run.stopped = f"quota reserve reached: {exc}"
                    return
                except TooManyRequests:
                    pass
                except (WarmError, RegistryError, aiohttp.ClientError, OSError) as exc:
                    log.warning("sync %s: %s:%s: %s", entry.key, entry.repository, tag, exc)
                    run.failed.append(tag)
                    return
                wait = upstream.rate_limit.wait_left()
                if wait <= 0:  # failed for another reason (said by the walk)
                    run.failed.append(tag)
                    return
                if wait > MAX_BACKOFF:
                    run.stopped = (
                        f"upstream {upstream.name} rate-limits for {wait:.0f}s; the next run "
                        "tries again"
                    )
                    return
                log.info(
                    "sync %s: upstream %s answered 429; waiting %.1fs",
                    entry.key,
                    upstream.name,
                    wait,
                )
                await asyncio.sleep(wait + 0.05)
            run.failed.append(tag)

    def quota(self, upstream: UpstreamClient) -> Quota:
        quota = self._quotas.get(upstream.name)
        if quota is None or quota.upstream is not upstream:
            quota = self._quotas[upstream.name] = Quota(upstream, self.config.sync_quota_reserve)
        return quota

    async def stored_for(
        self, upstream: UpstreamClient, repo: str, tag: str, *, named: bool
    ) -> bool:
        """Whether the manifest ``tag`` names upstream now (one free HEAD) is stored for
        ``repo``. ``named``: let the HEAD count as the upstream vouching for it (as a
        pull's revalidation does); a dry run records nothing."""
        head = await upstream.head_manifest(repo, tag, upstream_accept(KNOWN_TYPES))
        if head is None or not head.digest:
            return False
        return await self.has(upstream, repo, head.digest, named=named)

    async def has(self, upstream: UpstreamClient, repo: str, digest: str, *, named: bool) -> bool:
        mirror = self.mirror
        try:
            parsed = parse_digest(digest)
        except RegistryError:
            return False
        if not await mirror.store.exists(parsed):
            return False
        if named:
            return await mirror.provenance.readable(
                upstream, repo, digest, Kind.MANIFEST, named=True
            )
        return await mirror.provenance.recorded(upstream.name, repo, digest)


class _SyncSource(StoreSource):
    """``commands.warm``'s Source for a sync: the mirror's own manifests and fetches (as
    ``warm`` without ``--mirror``) on the entry's upstream, with the quota checked before
    every manifest GET."""

    def __init__(self, syncer: Syncer, upstream: UpstreamClient, run: SyncRun) -> None:
        # The entry names its upstream and repository as the index keeps them already.
        super().__init__(
            syncer.mirror, STALL_TIMEOUT, lambda ref: Route(upstream, ref.name, ref.name)
        )
        self.syncer = syncer
        self.upstream = upstream
        self.run = run

    async def manifest(self, ref: ImageRef, reference: str) -> Got:
        quota = self.syncer.quota(self.upstream)
        if await quota.take():
            try:
                got = await super().manifest(ref, reference)
            finally:
                await quota.give_back()
        else:
            # Near the reserve: go on only with what is stored already (a HEAD is free).
            if is_digest(reference):
                stored = await self.syncer.has(self.upstream, ref.name, reference, named=False)
            else:
                stored = await self.syncer.stored_for(
                    self.upstream, ref.name, reference, named=True
                )
            if not stored:
                raise QuotaReached(quota.said())
            got = await super().manifest(ref, reference)
        if got.stale and self.upstream.rate_limit.wait_left() > 0:
            # The cache answered because the upstream is rate-limiting: not refreshed.
            raise TooManyRequests(f"upstream {self.upstream.name} is rate-limiting")
        return got

    async def blob(
        self, ref: ImageRef, digest: Digest, size: int | None, progress: Callable[[int], None]
    ) -> Pulled:
        pulled = await super().blob(ref, digest, size, progress)
        # Tags sharing a layer join one fetch of it: counted once.
        if not pulled.cached and str(digest) not in self.run.fetched:
            self.run.fetched.add(str(digest))
            self.run.fetched_bytes += pulled.size
        return pulled

    async def close(self) -> None:
        pass  # the mirror is the caller's


class _LogLines:
    """A Reporter's output in the server: each line to the log (debug)."""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if text.strip():
            log.debug("sync: %s", text.rstrip())
        return len(text)

    def flush(self) -> None:
        pass
