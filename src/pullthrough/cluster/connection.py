"""The one Redis connection a replica's cluster components share, and what a replica does
when Redis cannot answer.

Every call goes through ``Coordination.call``. When Redis is unreachable (refused, timed
out, loading, read-only after a failover), the call raises ``RedisUnavailable`` and each
caller falls back to what one process would do alone: fetch without a claim, revalidate
without a lock, skip the index write. The first failure is logged once as "cluster
coordination suspended"; for ``REST_FOR`` seconds after a failure calls fail at once
instead of waiting for time-outs again; the first call that succeeds afterwards logs
"resumed". Nothing has to be restarted when Redis comes back.

Redis refusing this replica's password is no outage but a configuration error: it is
logged naming ``mirror.cluster.redis.password`` (never the password), and a replica
refused at start-up does not start (``Cluster.start``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from pullthrough.config.model import ClusterConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# Every key this mirror writes starts with this, so one Redis database can be inspected
# (and flushed) knowing which keys are ours.
PREFIX = "pullthrough:"
# After Redis failed to answer, calls fail at once for this long: a request must not pay
# a connect time-out for each of its Redis calls while Redis is down.
REST_FOR = 1.0
# Redis answers in well under a millisecond on a LAN; a second means it is not answering.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0


class RedisUnavailable(Exception):
    """Redis could not answer; the caller goes on without the cluster."""


class Coordination:
    """A replica's connection to the cluster's Redis, and its name among the replicas."""

    def __init__(self, config: ClusterConfig) -> None:
        self.node = config.advertise
        self.address = f"{config.redis_host}:{config.redis_port}/{config.redis_db}"
        self.client: aioredis.Redis = aioredis.Redis(
            host=config.redis_host,
            port=config.redis_port,
            db=config.redis_db,
            password=config.redis_password,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            # One immediate retry on a fresh connection covers a pooled connection that
            # died with a Redis restart; more would only delay the fallback.
            retry=Retry(NoBackoff(), 1),
            ssl=config.redis_tls,
            ssl_ca_certs=config.redis_tls_ca,
        )
        self.suspended = False
        self.refused = False  # the last failure was Redis refusing our password
        self._rest_until = 0.0

    async def call(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``operation`` against the client; raises RedisUnavailable when Redis cannot
        answer (or answered with an error: a script bug must not fail a pull either). The
        client is typed Any: redis-py's command types do not tell its asyncio client from
        its blocking one."""
        if time.monotonic() < self._rest_until:
            raise RedisUnavailable("redis did not answer a moment ago")
        try:
            result = await operation(self.client)
        except ResponseError as exc:
            if "READONLY" in str(exc) or "LOADING" in str(exc):
                self._failed(exc)
            else:
                log.error("redis refused a cluster command: %s", exc)
            raise RedisUnavailable(str(exc)) from exc
        except AuthenticationError as exc:
            self._failed(exc, refused=True)
            raise RedisUnavailable(str(exc)) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise RedisUnavailable(str(exc)) from exc
        self.refused = False
        if self.suspended:
            self.suspended = False
            log.warning("redis at %s answers again: cluster coordination resumed", self.address)
        return result

    def _failed(self, exc: BaseException, *, refused: bool = False) -> None:
        self._rest_until = time.monotonic() + REST_FOR
        if refused and not self.refused:
            log.error(
                "redis at %s refused this replica's password (%s): check "
                "mirror.cluster.redis.password (REGISTRY_MIRROR_CLUSTER_REDIS_PASSWORD); "
                "cluster coordination suspended until it accepts it",
                self.address,
                exc,
            )
        self.refused = refused
        if not self.suspended:
            self.suspended = True
            if refused:
                return  # said above
            log.warning(
                "redis at %s is unreachable (%s): cluster coordination suspended; this "
                "replica serves from the store and fetches misses without coordination "
                "until redis answers again",
                self.address,
                exc or type(exc).__name__,
            )

    async def ping(self) -> bool:
        """Whether Redis answers now (logs the suspension or the recovery)."""
        try:
            await self.call(lambda r: r.ping())
        except RedisUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()


def key(*parts: str) -> str:
    """A Redis key under this mirror's prefix; parts are joined by ``|``, which no
    upstream name, repository, tag or digest contains."""
    return PREFIX + "|".join(parts)
