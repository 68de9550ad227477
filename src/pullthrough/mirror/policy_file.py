"""``mirror.policy`` follows its config file while serving: re-read when the file changes
(looked at every second, as the htpasswd file is) and on SIGHUP, without a restart.

Only the policy is taken from the re-read file; every other setting needs a restart. A file
that no longer loads keeps the policy in force (and says why in the log): a typo must not
open what the operator denied, nor close what was allowed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pullthrough.config import ConfigError, load
from pullthrough.mirror.policy import Policy, never_matching

log = logging.getLogger(__name__)

RECHECK_INTERVAL = 1.0


class PolicyFile:
    """Keeps ``apply`` fed with the policy the config file at ``path`` says now."""

    def __init__(
        self,
        path: Path,
        apply: Callable[[Policy], None],
        *,
        upstreams: tuple[str, ...],
        any_upstream: bool,
    ) -> None:
        self.path = path
        self._apply = apply
        self._upstreams = upstreams
        self._any_upstream = any_upstream
        self._seen = _identity(path)
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        """Read the file now and apply its policy; False (old policy kept) if it does not
        load."""
        async with self._lock:
            self._seen = await asyncio.to_thread(_identity, self.path)
            try:
                config = await asyncio.to_thread(load, self.path)
            except ConfigError as exc:
                log.error("re-reading %s: %s; the policy in force is kept", self.path, exc)
                return False
            policy = Policy(config.policy)
            self._apply(policy)
            log.info("mirror.policy re-read from %s: %d rule(s)", self.path, len(policy.rules))
            warn_never_matching(policy, self._upstreams, any_upstream=self._any_upstream)
            return True

    async def watch(self, interval: float = RECHECK_INTERVAL) -> None:
        """Re-read the file whenever it changes, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if await asyncio.to_thread(_identity, self.path) != self._seen:
                await self.reload()


def warn_never_matching(policy: Policy, upstreams: tuple[str, ...], *, any_upstream: bool) -> None:
    for rule, reason in never_matching(policy, upstreams, any_upstream=any_upstream):
        log.warning("%s can never match: %s", rule.key, reason)


def _identity(path: Path) -> tuple[int, int, int] | None:
    # Editors and ConfigMap updates replace the file: its inode changes, maybe not its mtime.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
