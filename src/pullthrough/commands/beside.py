"""What the commands that fill or change the store from their own process share: CONFIG
given ahead of the command's own words, and starting a mirror over the config's store when
no server is using it.

``pullthrough.cli`` gives every command an optional CONFIG positional ahead of its own;
followed by words of the command's (``warm alpine busybox``, ``offline ghcr.io on``),
argparse would read the first word as CONFIG and the CLI would fail to load it. So CONFIG
is parsed under another name, and ``run`` decides whether the first word is a config file.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from pullthrough.config import Config, load

if TYPE_CHECKING:
    from pullthrough.mirror.service import Mirror

FIRST = "config_or_word"


def config_may_be_a_word(parser: argparse.ArgumentParser) -> None:
    """Parse the CLI's optional CONFIG as ``FIRST``: a config file or the first word."""
    for action in parser._actions:  # argparse has no public way to find an added action
        if action.dest == "config":
            action.dest = FIRST
            action.metavar = "CONFIG"
    parser.set_defaults(config=None)


def is_config(text: str) -> bool:
    return text.endswith((".yml", ".yaml")) or Path(text).is_file()


def config_and_words(
    config: Config, args: argparse.Namespace, words: list[str]
) -> tuple[Config, list[str]]:
    """The config to use (loaded when the first word names one) and the command's words.
    Raises ConfigError."""
    first: str | None = getattr(args, FIRST, None)
    if first is None:
        return config, words
    if is_config(first):
        return load(first), words
    return config, [first, *words]


async def start_mirror(config: Config, why: str) -> Mirror | int:
    """A started Mirror over the config's store, or the exit code after saying why not on
    stderr: a registry answers at the config's address (``why``: what to do instead;
    filling its store from a second process would delete its downloads in progress), or
    the store cannot be opened. ``{url}`` in ``why`` is replaced by the registry's URL."""
    running = await server_answering(config)
    if running is not None:
        print(
            f"error: a registry answers at {running}, the address in this config: "
            f"{why.replace('{url}', running)} "
            "(filling its store from a second process would delete its downloads in "
            "progress)",
            file=sys.stderr,
        )
        return 2
    from pullthrough.mirror.service import Mirror

    mirror = Mirror(config)
    try:
        await mirror.start()
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot open the store in {config.root}: {exc}", file=sys.stderr)
        await mirror.stop()
        return 1
    return mirror


async def server_answering(config: Config) -> str | None:
    """The base URL of a registry answering at the config's address, if one does."""
    host = config.host if config.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    base = f"{'https' if config.tls_certificate else 'http'}://{host}:{config.port}"
    try:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(f"{base}/v2/", ssl=False, timeout=aiohttp.ClientTimeout(total=2.0)) as resp,
        ):
            answered = "Docker-Distribution-API-Version" in resp.headers
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return base if answered else None
