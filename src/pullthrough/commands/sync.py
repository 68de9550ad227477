"""``pullthrough sync [CONFIG] [--dry-run]``: run every ``mirror.sync`` entry once, now.

Each entry's tags are listed upstream, matched and checked against ``mirror.policy``; what
is missing is fetched into the config's store in this process (as ``warm`` without
``--mirror``, so not while a server answers at the config's address: its downloads in
progress would be deleted). ``--dry-run`` fetches nothing: it lists the tags, asks each
matching one with a HEAD (free on Docker Hub) and says which would be fetched.

Output: a progress display on a terminal, plain lines elsewhere; one summary line per
entry. Exit 1 when a tag (or an entry's tag list) could not be synced, 2 for a config or
start-up problem.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pullthrough.commands.beside import start_mirror
from pullthrough.config import Config
from pullthrough.progress import Reporter, human


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list and match tags and say what would be fetched; fetch nothing",
    )


def run(config: Config, args: argparse.Namespace) -> int:
    if not config.sync:
        print("nothing to sync: the config has no mirror.sync entries", file=sys.stderr)
        return 0
    return asyncio.run(sync(config, dry_run=args.dry_run))


async def sync(config: Config, *, dry_run: bool) -> int:
    from pullthrough.mirror.sync import Syncer

    started = await start_mirror(config, "it syncs mirror.sync on its own schedule")
    if isinstance(started, int):
        return started
    mirror = started
    failed = 0
    try:
        with Reporter() as reporter:
            runs = await Syncer(mirror).run_all(dry_run=dry_run, reporter=reporter)
            for done in runs:
                entry = done.entry
                failed += len(done.failed) + (done.error is not None)
                for tag in done.denied:
                    reporter.line(f"denied {done.label}:{tag} (mirror.policy): not synced")
                if dry_run:
                    for tag in done.would_fetch:
                        reporter.line(f"would fetch {done.label}:{tag}")
                    summary = (
                        f"{len(done.matched)} of {done.listed} tags match, "
                        f"{len(done.would_fetch)} to fetch, {len(done.synced)} stored"
                    )
                else:
                    summary = (
                        f"{len(done.synced)} of {len(done.matched)} matching tags up to date "
                        f"({done.listed} listed), {human(done.fetched_bytes)} fetched"
                    )
                if done.failed:
                    summary += f", {len(done.failed)} failed: {', '.join(sorted(done.failed))}"
                if done.stopped:
                    summary += f"; stopped: {done.stopped}"
                verb = "dry run" if dry_run else "synced"
                reporter.line(f"{verb} {entry.key} {done.label}: {summary}")
    finally:
        await mirror.stop()
    return 1 if failed else 0
