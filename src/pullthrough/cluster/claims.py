"""Claims: which replica downloads a digest for an upstream, recorded in Redis.

Claims are per (upstream, digest), like the fetches in one process
(``pullthrough.mirror.fetches``): a client of upstream U never follows or adopts a
download upstream V is doing; U serves the bytes itself (``mirror.provenance``).

``fetch|U|D`` is a hash: the owner's token and node, the temp file it writes (``file``: its
id, the path is derived from the digest and the storage root), the blob's size once the
upstream said it, whether the upstream has answered (``started``), the repository it
fetches for (``repo``) and the one the temp file's first bytes were fetched for
(``origin``: they differ after a takeover), and its ``state``: ``running``, or ``failed``
with the error every follower's clients should get. It expires ``CLAIM_TTL`` seconds after
the owner last renewed it, and the owner renews it only while its download makes progress,
so a replica that died or hangs loses it within seconds.

``partial|U|D`` (file, size, repo) outlives the claim for ``PARTIAL_TTL``: it names the
temp file a dead owner left, so that the next owner adopts those bytes (re-hashing them and
asking the upstream for the rest with a Range request) instead of starting over.

Every change is one Lua script, so two replicas can never both believe they own a digest.

Whatever Redis holds is untrusted: anyone who can write to it may have written it. A path
is never taken from a record (a record names a temp file by an id of 32 hex digits; the
path is the storage root's ``tmp/`` plus the digest plus that id), and every field is
checked when read. The scripts treat a record whose file id or size is malformed as absent
(and say so, for the log); a record the Python side still finds malformed is ignored with a
warning and the replica fetches alone.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pullthrough.cluster.connection import Coordination, key
from pullthrough.cluster.errors import error_from_json, error_to_json
from pullthrough.errors import NameInvalid, RegistryError
from pullthrough.reference import Digest, validate_name
from pullthrough.store.blobs import BlobStore, is_temp_id

log = logging.getLogger(__name__)

CLAIM_TTL = 4.0
# Long enough for a replica to restart and its clients to retry; a temp file older than
# this is nobody's (the sweeper removes it).
PARTIAL_TTL = 600.0
# A failed claim stays this long so that every follower sees why, then it is gone.
FAILED_TTL = 5.0

# Sizes beyond this are no blob's (1 PiB): a record saying so is malformed. The scripts
# accept at most 15 digits, which is less.
MAX_SIZE = 2**50
# A replica's name (its advertise URL) and a fetch's token (name#12 hex), as they are
# written; anything else (e.g. a line break meant to forge a log line) is malformed.
_NODE = re.compile(r"[\x21-\x7e]{1,256}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,256}#[0-9a-f]{12}")
# A failure's error as another replica wrote it (error_to_json); longer is not ours.
MAX_ERROR_JSON = 8192

# "alone": the record found is malformed; the caller fetches without the cluster.
Verdict = Literal["own", "adopt", "follow", "gone", "alone"]

# What the scripts check before they use a record: its file id (what the path is derived
# from) and its size. Returned as warnings for the log when a record is ignored.
_WELLFORMED = """
local function wellformed(file, size)
  if not file or #file ~= 32 or string.find(file, '[^0-9a-f]') then return false end
  if size and size ~= '' and (#size > 15 or string.find(size, '[^0-9]')) then return false end
  return true
end
local function described(k)
  local file = redis.call('HGET', k, 'file')
  if not file then file = redis.call('HGET', k, 'path') or '(none)' end
  return string.sub(file, 1, 200)
end
"""

# Claim the digest unless a running claim exists (then follow it). A partial file left
# by a dead owner is adopted. With a required file (a follower taking over the file its
# clients already read from), nothing else will do: "gone" if the partial names another.
# Returns {verdict, the claim's fields, warnings}.
_CLAIM = (
    _WELLFORMED
    + """
local warnings = {}
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' then
  if wellformed(redis.call('HGET', KEYS[1], 'file'), redis.call('HGET', KEYS[1], 'size')) then
    return {'follow', redis.call('HGETALL', KEYS[1]), warnings}
  end
  table.insert(warnings, 'claim naming ' .. described(KEYS[1]))
end
local file = redis.call('HGET', KEYS[2], 'file')
local size = redis.call('HGET', KEYS[2], 'size') or ''
local origin = redis.call('HGET', KEYS[2], 'repo') or ''
if redis.call('EXISTS', KEYS[2]) == 1 and (origin == '' or not wellformed(file, size)) then
  table.insert(warnings, 'partial download record naming ' .. described(KEYS[2]))
  file = false
  origin = ''
end
local verdict = 'adopt'
if ARGV[8] ~= '' then
  if file and file ~= ARGV[8] then return {'gone', {}, warnings} end
  if not file then size = '' end
  file = ARGV[8]
elseif not file then
  file = ARGV[3]
  size = ''
  origin = ARGV[7]
  verdict = 'own'
end
if origin == '' then origin = ARGV[7] end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'node', ARGV[2], 'file', file,
  'state', 'running', 'size', size, 'started', '', 'upstream', ARGV[6], 'repo', ARGV[7],
  'origin', origin)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], 'file', file, 'size', size, 'repo', origin)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {verdict, redis.call('HGETALL', KEYS[1]), warnings}
"""
)

# The owner is alive and making progress: extend both expiries, publish size and start.
# 1: still ours. 0: another replica took it over on the same file (follow it).
# -1: another file is being fetched for this digest now (go on alone). 2: the claim had
# lapsed with nobody holding it, and is ours again (unless the blob was stored meanwhile).
_RENEW = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'file') == ARGV[2] then return 0 end
  return -1
end
if not owner then
  local file = redis.call('HGET', KEYS[2], 'file')
  if file and file ~= ARGV[2] then return -1 end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'node', ARGV[7], 'file', ARGV[2],
    'state', 'running', 'upstream', ARGV[8], 'repo', ARGV[9], 'origin', ARGV[10])
end
redis.call('HSET', KEYS[1], 'size', ARGV[5], 'started', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'file', ARGV[2], 'size', ARGV[5])
redis.call('HSETNX', KEYS[2], 'repo', ARGV[10])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if owner then return 1 end
return 2
"""

# The claim is no longer needed (ARGV[2] ~= ''), and the blob is stored, so the partial
# file is gone too (ARGV[3] == '1'): nothing to follow or adopt any more.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] == '1' and redis.call('HGET', KEYS[2], 'file') == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# The fetch failed (its temp file is already removed): followers learn why, and the next
# request for the digest starts afresh.
_FAILED = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if redis.call('HGET', KEYS[2], 'file') == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""


class MalformedRecord(Exception):
    """A record in Redis that no replica writes (never trusted, never used)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A replica's download of a digest for an upstream, as Redis records it (checked)."""

    owner: str  # the owning fetch's token
    node: str  # the owning replica (its advertise URL)
    file: str  # the temp file's id
    path: Path  # derived: the storage root's tmp/, the digest and ``file``
    state: str
    size: int | None
    started: bool
    upstream: str
    repo: str  # the repository the owner fetches for
    origin: str  # the repository the temp file's first bytes were fetched for
    error: RegistryError | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class Claims:
    def __init__(self, coordination: Coordination, store: BlobStore) -> None:
        self._c = coordination
        self._store = store
        client = coordination.client
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._failed = client.register_script(_FAILED)

    @staticmethod
    def _keys(upstream: str, digest: Digest) -> list[str]:
        return [key("fetch", upstream, str(digest)), key("partial", upstream, str(digest))]

    async def claim(
        self,
        digest: Digest,
        upstream: str,
        *,
        token: str,
        file: str,
        repo: str,
        require_file: str | None = None,
    ) -> tuple[Verdict, Claim | None]:
        """Own the download of ``digest`` from ``upstream`` (writing temp file ``file``,
        or adopting a dead owner's partial file), or learn whose download to follow.
        "alone" (with None) when the record found is malformed. Raises RedisUnavailable."""
        args: list[str | int] = [
            token,
            self._c.node,
            file,
            _ms(CLAIM_TTL),
            _ms(PARTIAL_TTL),
            upstream,
            repo,
            require_file or "",
        ]
        keys = self._keys(upstream, digest)
        reply = await self._c.call(lambda r: self._claim(keys=keys, args=args))
        try:
            verdict, fields, warnings = reply
            for warning in warnings:
                log.warning(
                    "ignored a malformed record in redis for %s from %s: %r",
                    digest,
                    upstream,
                    warning,
                )
            if verdict not in ("own", "adopt", "follow", "gone"):
                raise MalformedRecord(f"verdict {verdict!r}")
            if verdict == "gone":
                return "gone", None
            claim = self._parse(digest, upstream, fields)
            if claim is None:
                raise MalformedRecord("no claim")
        except (MalformedRecord, TypeError, ValueError) as exc:
            log.warning(
                "ignored the claim in redis on %s from %s (%s): fetching without the cluster",
                digest,
                upstream,
                exc,
            )
            return "alone", None
        return verdict, claim

    async def renew(
        self,
        digest: Digest,
        upstream: str,
        *,
        token: str,
        file: str,
        size: int | None,
        started: bool,
        repo: str,
        origin: str,
    ) -> int:
        """1: still ours (expiry extended); 2: ours again after it lapsed; 0: taken over
        on the same file; -1: another file is being fetched for the digest. Raises
        RedisUnavailable."""
        args: list[str | int] = [
            token,
            file,
            _ms(CLAIM_TTL),
            _ms(PARTIAL_TTL),
            "" if size is None else str(size),
            "1" if started else "",
            self._c.node,
            upstream,
            repo,
            origin,
        ]
        keys = self._keys(upstream, digest)
        reply = await self._c.call(lambda r: self._renew(keys=keys, args=args))
        return int(reply)

    async def read(self, digest: Digest, upstream: str) -> Claim | None:
        """The claim on ``digest`` from ``upstream`` now, None when there is none or it
        is malformed (logged). Raises RedisUnavailable."""
        fields = await self._c.call(lambda r: r.hgetall(key("fetch", upstream, str(digest))))
        try:
            return self._parse(digest, upstream, fields)
        except MalformedRecord as exc:
            log.warning(
                "ignored a malformed claim in redis on %s from %s: %s", digest, upstream, exc
            )
            return None

    async def done(self, digest: Digest, upstream: str, *, token: str, file: str) -> None:
        """The blob is stored: release the claim and forget the partial file."""
        await self._call_release(digest, upstream, token, file, stored=True)

    async def release(self, digest: Digest, upstream: str, *, token: str, file: str) -> None:
        """Give the claim up without downloading; a partial file stays for the next owner."""
        await self._call_release(digest, upstream, token, file, stored=False)

    async def _call_release(
        self, digest: Digest, upstream: str, token: str, file: str, *, stored: bool
    ) -> None:
        args = [token, file, "1" if stored else ""]
        keys = self._keys(upstream, digest)
        await self._c.call(lambda r: self._release(keys=keys, args=args))

    async def failed(
        self, digest: Digest, upstream: str, *, token: str, file: str, error: RegistryError
    ) -> None:
        args: list[str | int] = [token, file, json.dumps(error_to_json(error)), _ms(FAILED_TTL)]
        keys = self._keys(upstream, digest)
        await self._c.call(lambda r: self._failed(keys=keys, args=args))

    def _parse(self, digest: Digest, upstream: str, fields: Any) -> Claim | None:
        """The claim a record describes, every field checked; None for no record.
        Raises MalformedRecord."""
        if isinstance(fields, list):  # HGETALL from a script: a flat name, value list
            if len(fields) % 2:
                raise MalformedRecord("odd field list")
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        if not fields:
            return None
        if not isinstance(fields, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise MalformedRecord("not a hash of strings")
        file = fields.get("file", "")
        if not is_temp_id(file):
            # The one field a path comes from: only ever an id, never a path.
            named = fields.get("path") or file
            raise MalformedRecord(f"temp file {named[:200]!r} is not a temp file id")
        owner, node = fields.get("owner", ""), fields.get("node", "")
        if not _TOKEN.fullmatch(owner):
            raise MalformedRecord(f"owner {owner[:100]!r}")
        if not _NODE.fullmatch(node):
            raise MalformedRecord(f"node {node[:100]!r}")
        state = fields.get("state", "")
        if state not in ("running", "failed"):
            raise MalformedRecord(f"state {state[:20]!r}")
        if fields.get("upstream") != upstream:
            raise MalformedRecord(f"upstream {fields.get('upstream', '')[:100]!r}")
        repo, origin = fields.get("repo", ""), fields.get("origin") or fields.get("repo", "")
        for name in (repo, origin):
            try:
                validate_name(name)
            except NameInvalid:
                raise MalformedRecord(f"repository {name[:100]!r}") from None
        started = fields.get("started", "")
        if started not in ("", "1"):
            raise MalformedRecord(f"started {started[:20]!r}")
        error = None
        if state == "failed":
            raw = fields.get("error", "")
            if len(raw) > MAX_ERROR_JSON:
                raise MalformedRecord("error too long")
            try:
                error = error_from_json(json.loads(raw))
            except (ValueError, RecursionError):
                raise MalformedRecord("error is not JSON") from None
        return Claim(
            owner=owner,
            node=node,
            file=file,
            path=self._store.temp_path(digest, file),
            state=state,
            size=parse_size(fields.get("size", "")),
            started=bool(started),
            upstream=upstream,
            repo=repo,
            origin=origin,
            error=error,
        )


def parse_size(text: str) -> int | None:
    """A size as a record holds it: "" (not known yet) or a decimal within bounds.
    Raises MalformedRecord."""
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 16 or int(text) > MAX_SIZE:
        raise MalformedRecord(f"size {text[:30]!r}")
    return int(text)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
