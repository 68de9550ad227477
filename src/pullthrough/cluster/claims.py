"""Claims: which replica downloads a digest, recorded in Redis.

``fetch|<digest>`` is a hash: the owner's token and node, the temp file it writes (``path``,
inside the shared storage root), the blob's size once the upstream said it, whether the
upstream has answered (``started``), the (upstream, repository) it fetches for, and its
``state``: ``running``, or ``failed`` with the error every follower's clients should get.
It expires ``CLAIM_TTL`` seconds after the owner last renewed it, and the owner renews it
only while its download makes progress, so a replica that died or hangs loses it within
seconds.

``partial|<digest>`` (path, size) outlives the claim for ``PARTIAL_TTL``: it names the temp
file a dead owner left, so that the next owner adopts those bytes (re-hashing them and
asking the upstream for the rest with a Range request) instead of starting over.

Every change is one Lua script, so two replicas can never both believe they own a digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pullthrough.cluster.connection import Coordination, key
from pullthrough.cluster.errors import error_from_json, error_to_json
from pullthrough.errors import RegistryError

CLAIM_TTL = 4.0
# Long enough for a replica to restart and its clients to retry; a temp file older than
# this is nobody's (the sweeper removes it).
PARTIAL_TTL = 600.0
# A failed claim stays this long so that every follower sees why, then it is gone.
FAILED_TTL = 5.0

Verdict = Literal["own", "adopt", "follow", "gone"]

# Claim the digest unless a running claim exists (then follow it). A partial file left
# by a dead owner is adopted. With a required path (a follower taking over the file its
# clients already read from), nothing else will do: "gone" if the partial names another.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' then
  return {'follow', redis.call('HGETALL', KEYS[1])}
end
local path = redis.call('HGET', KEYS[2], 'path')
local size = redis.call('HGET', KEYS[2], 'size') or ''
local verdict = 'adopt'
if ARGV[8] ~= '' then
  if path and path ~= ARGV[8] then return {'gone', {}} end
  path = ARGV[8]
elseif not path then
  path = ARGV[3]
  size = ''
  verdict = 'own'
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'node', ARGV[2], 'path', path,
  'state', 'running', 'size', size, 'started', '', 'upstream', ARGV[6], 'repo', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], 'path', path, 'size', size)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {verdict, redis.call('HGETALL', KEYS[1])}
"""

# The owner is alive and making progress: extend both expiries, publish size and start.
# 1: still ours. 0: another replica took it over on the same file (follow it).
# -1: another file is being fetched for this digest now (go on alone). 2: the claim had
# lapsed with nobody holding it, and is ours again (unless the blob was stored meanwhile).
_RENEW = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'path') == ARGV[2] then return 0 end
  return -1
end
if not owner then
  local path = redis.call('HGET', KEYS[2], 'path')
  if path and path ~= ARGV[2] then return -1 end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'node', ARGV[7], 'path', ARGV[2],
    'state', 'running', 'upstream', ARGV[8], 'repo', ARGV[9])
end
redis.call('HSET', KEYS[1], 'size', ARGV[5], 'started', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'path', ARGV[2], 'size', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if owner then return 1 end
return 2
"""

# The blob is stored: nothing to follow or adopt any more.
_DONE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('HGET', KEYS[2], 'path') == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""

# The fetch failed (its temp file is already removed): followers learn why, and the next
# request for the digest starts afresh.
_FAILED = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if redis.call('HGET', KEYS[2], 'path') == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A replica's download of a digest, as Redis records it."""

    owner: str  # the owning fetch's token
    node: str  # the owning replica (its advertise URL)
    path: str
    state: str
    size: int | None
    started: bool
    upstream: str
    repo: str
    error: RegistryError | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class Claims:
    def __init__(self, coordination: Coordination) -> None:
        self._c = coordination
        client = coordination.client
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._done = client.register_script(_DONE)
        self._failed = client.register_script(_FAILED)

    @staticmethod
    def _keys(digest: str) -> list[str]:
        return [key("fetch", digest), key("partial", digest)]

    async def claim(
        self,
        digest: str,
        *,
        token: str,
        path: str,
        upstream: str,
        repo: str,
        require_path: str | None = None,
    ) -> tuple[Verdict, Claim | None]:
        """Own the download of ``digest`` (writing ``path``, or adopting a dead owner's
        partial file), or learn whose download to follow. Raises RedisUnavailable."""
        args: list[str | int] = [
            token,
            self._c.node,
            path,
            _ms(CLAIM_TTL),
            _ms(PARTIAL_TTL),
            upstream,
            repo,
            require_path or "",
        ]
        reply = await self._c.call(lambda r: self._claim(keys=self._keys(digest), args=args))
        verdict, fields = reply[0], reply[1]
        return verdict, _parse(fields)

    async def renew(
        self,
        digest: str,
        *,
        token: str,
        path: str,
        size: int | None,
        started: bool,
        upstream: str,
        repo: str,
    ) -> int:
        """1: still ours (expiry extended); 2: ours again after it lapsed; 0: taken over
        on the same file; -1: another file is being fetched for the digest. Raises
        RedisUnavailable."""
        args: list[str | int] = [
            token,
            path,
            _ms(CLAIM_TTL),
            _ms(PARTIAL_TTL),
            "" if size is None else str(size),
            "1" if started else "",
            self._c.node,
            upstream,
            repo,
        ]
        reply = await self._c.call(lambda r: self._renew(keys=self._keys(digest), args=args))
        return int(reply)

    async def read(self, digest: str) -> Claim | None:
        """The claim on ``digest`` now, None when there is none. Raises RedisUnavailable."""
        fields = await self._c.call(lambda r: r.hgetall(key("fetch", digest)))
        return _parse(fields)

    async def done(self, digest: str, *, token: str, path: str) -> None:
        await self._c.call(lambda r: self._done(keys=self._keys(digest), args=[token, path]))

    async def failed(self, digest: str, *, token: str, path: str, error: RegistryError) -> None:
        args: list[str | int] = [token, path, json.dumps(error_to_json(error)), _ms(FAILED_TTL)]
        await self._c.call(lambda r: self._failed(keys=self._keys(digest), args=args))


def _parse(fields: Any) -> Claim | None:
    if isinstance(fields, list):  # HGETALL from a script: a flat name, value list
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    if not fields or "path" not in fields:
        return None
    size = fields.get("size") or ""
    error = None
    if fields.get("error"):
        try:
            error = error_from_json(json.loads(fields["error"]))
        except ValueError:
            error = error_from_json(None)
    return Claim(
        owner=fields.get("owner", ""),
        node=fields.get("node", ""),
        path=fields["path"],
        state=fields.get("state", ""),
        size=int(size) if size.isdigit() else None,
        started=bool(fields.get("started")),
        upstream=fields.get("upstream", ""),
        repo=fields.get("repo", ""),
        error=error,
    )


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
