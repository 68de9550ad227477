"""``pullthrough warm [CONFIG] IMAGE... [--platform OS/ARCH] [--mirror URL]``: prefetch images.

Each image's manifest is fetched by tag (or digest), then, for an index, each child
manifest (only those of the ``--platform`` asked for, if any), then every blob they
reference. Two ways:

* ``--mirror http://host:port`` pulls through a running mirror over HTTP, exactly as a
  client would (one ``Accept`` line naming every manifest type; bodies read to the end
  and discarded, each blob's digest checked while it streams), so the mirror stores it.
* Without ``--mirror`` it runs the mirror's own policy in this process on the config's
  store (``Mirror(config)``): for a mirror that is stopped, or to fill a store before the
  first start. The store's temp files are cleared at start-up, which would break a running
  server's downloads, so this refuses when the config's address answers as a registry.

Image references: ``alpine:3.19`` and ``library/alpine`` (Docker Hub rules on the upstream
named docker.io), ``ghcr.io/org/app:v1`` (a first component with a dot or a port names a
configured upstream; ``docker.io/...`` names the ``proxy:`` upstream), ``name@sha256:...``.

Output: a progress display on a terminal; otherwise one ``pulled <digest> <bytes>`` line per
object (``(cached)`` appended when direct warming found it stored already). Exit 1 when any
image or object failed, each failure named with the registry's error code and message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp

from pullthrough.commands.beside import config_and_words, config_may_be_a_word, start_mirror
from pullthrough.config import Config, ConfigError
from pullthrough.errors import RegistryError
from pullthrough.mirror.warm_images import (
    ImageRef,
    Platform,
    WarmError,
    parse_image,
    parse_platform,
)
from pullthrough.mirror.warm_sources import HttpSource, Source, StoreSource
from pullthrough.mirror.warming import Warmer, report_error
from pullthrough.progress import Reporter
from pullthrough.server.routing import resolve

DEFAULT_JOBS = 4
DEFAULT_TIMEOUT = 60.0


# --- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_may_be_a_word(parser)
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="e.g. alpine:3.19, ghcr.io/org/app:v1, name@sha256:...",
    )
    parser.add_argument(
        "--platform",
        action="append",
        type=parse_platform,
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="of an index, warm only this platform's image (repeatable; default: all)",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="pull through the mirror running at URL (http://host:port) instead of "
        "filling the config's store directly",
    )
    parser.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help="blobs pulled at once (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a connect, a manifest or a stalled blob may take (default: %(default)s)",
    )


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        config, texts = config_and_words(config, args, list(args.images))
    except ConfigError as exc:
        print(f"pullthrough: config error: {exc}", file=sys.stderr)
        return 2
    refs: list[ImageRef] = []
    for text in texts:
        try:
            refs.append(parse_image(text))
        except RegistryError as exc:
            print(f"error: {text}: {exc.code}: {exc.message}", file=sys.stderr)
    if len(refs) != len(texts):
        return 2
    return asyncio.run(
        warm(
            config,
            refs,
            platforms=args.platform,
            mirror_url=args.mirror,
            jobs=max(1, args.jobs),
            time_limit=max(1.0, args.timeout),
        )
    )


async def warm(
    config: Config,
    refs: list[ImageRef],
    *,
    platforms: list[Platform],
    mirror_url: str | None,
    jobs: int,
    time_limit: float,
) -> int:
    source: Source
    if mirror_url is not None:
        if not mirror_url.startswith(("http://", "https://")):
            print(f"error: --mirror {mirror_url}: expected http://host:port", file=sys.stderr)
            return 2
        source = HttpSource(mirror_url, time_limit)
    else:
        started = await start_mirror(
            config, "if it is this mirror, warm through it with --mirror {url}"
        )
        if isinstance(started, int):
            return started
        mirror = started
        source = StoreSource(
            mirror, time_limit, lambda ref: resolve(mirror, ref.name, ref.registry)
        )
    failures = 0
    try:
        with Reporter() as reporter:
            warmer = Warmer(source, reporter, platforms=platforms, jobs=jobs)
            for ref in refs:
                try:
                    if not await warmer.image(ref):
                        failures += 1
                except (WarmError, RegistryError, aiohttp.ClientError, OSError) as exc:
                    failures += 1
                    report_error(ref, exc)
    finally:
        await source.close()
    return 1 if failures else 0
