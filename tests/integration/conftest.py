"""Fixtures that run real ``pullthrough serve`` processes in front of real upstreams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from tests.support.mirror import MirrorProcess
from tests.support.proxy import RecordingProxy

MirrorFactory = Callable[..., MirrorProcess]


@pytest.fixture
def mirror_factory(tmp_path: Path) -> Iterator[MirrorFactory]:
    """``mirror_factory(remoteurl, config={...}, start=True, env={...}) -> MirrorProcess``
    (``env``: variables added to the process's environment); every mirror is stopped (by
    PID) at teardown and its log shown if the test failed."""
    made: list[MirrorProcess] = []
    ids = count()

    def factory(
        remoteurl: str,
        *,
        config: dict[str, Any] | None = None,
        start: bool = True,
        wrapper: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> MirrorProcess:
        mirror = MirrorProcess(
            tmp_path / f"mirror-{next(ids)}", remoteurl, config=config, env=env, wrapper=wrapper
        )
        made.append(mirror)
        return mirror.start() if start else mirror

    yield factory
    for mirror in made:
        mirror.stop()
        print(f"--- {mirror.log_path} (tail)\n{mirror.log_tail(60)}")


@pytest.fixture
def mirror(mirror_factory: MirrorFactory, upstream_proxy: RecordingProxy) -> MirrorProcess:
    """A mirror whose upstream is the session registry, seen through a recording proxy."""
    return mirror_factory(upstream_proxy.url)
