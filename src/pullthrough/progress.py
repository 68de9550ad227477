"""Progress output for the long-running commands (``verify``, ``warm``).

On a terminal: a ``rich`` progress display, with result lines printed above it. Anywhere
else (a pipe, a log file, CI): plain lines only, so output stays greppable; a command may
also ask for a periodic plain summary line, because a bar that nobody sees would otherwise
leave a long run silent.

Methods may be called from worker threads (``verify`` hashes in a pool): rich's Progress
is thread-safe, and the plain path serialises its prints with a lock.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    # rich is imported only when a terminal will see it: the CLI imports every command
    # module for every command, serve included.
    from rich.progress import Progress, TaskID


def human(size: int) -> str:
    """``1536`` → ``1.5 KiB``: sizes for people (exact bytes go in ``--json``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Reporter:
    """Lines for results, and (on a TTY only) byte progress bars for work in flight."""

    def __init__(self, *, tty: bool | None = None, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.out),
                transient=True,
            )

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        """A result line: above the bars on a TTY, a plain line otherwise."""
        if self._progress is not None:
            # markup=False: digests and messages from upstreams may contain [brackets].
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        with self._lock:
            print(text, file=self.out, flush=True)

    def add(self, description: str, total: int | None) -> TaskID | None:
        """A bar (TTY only); None elsewhere, and every bar method accepts None."""
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def advance(self, task: TaskID | None, amount: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, amount)

    def update(self, task: TaskID | None, *, completed: int, total: int | None = None) -> None:
        if self._progress is not None and task is not None:
            if total is None:
                self._progress.update(task, completed=completed)
            else:
                self._progress.update(task, completed=completed, total=total)

    def remove(self, task: TaskID | None) -> None:
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)


class Ticker:
    """Says something at most every ``interval`` seconds: the plain-output heartbeat."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = time.monotonic() + interval
        self._lock = threading.Lock()

    def due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return False
            self._next = now + self.interval
            return True
