"""``pullthrough pin [CONFIG] IMAGE``, ``unpin [CONFIG] IMAGE`` and ``pins [CONFIG]``: keep
tags for good at run time, in addition to ``mirror.pins``.

IMAGE is ``[REGISTRY/]REPOSITORY[:TAG]``, TAG a glob (``alpine:3.*``), ``latest`` when left
out; without a registry it is the default upstream's (with Docker Hub's ``library/``). Pins
are kept in the index the servers of CONFIG read (Redis in cluster mode), and apply from
the next sweep on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pullthrough.commands.beside import config_and_words, config_may_be_a_word
from pullthrough.commands.offline import open_store
from pullthrough.config import Config, ConfigError
from pullthrough.config.model import Pin
from pullthrough.config.policy import pin_entry
from pullthrough.mirror.upstreams import DOCKER_HUB_ALIASES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.prog.split()[-1] == "pins":
        return
    # As for ``warm``: CONFIG is optional ahead of IMAGE, so the words are told apart in run.
    config_may_be_a_word(parser)
    parser.add_argument("words", nargs="*", metavar="IMAGE")


def run(config: Config, args: argparse.Namespace) -> int:
    if args.command == "pins":
        return asyncio.run(_list(config))
    try:
        config, words = config_and_words(config, args, list(args.words))
    except ConfigError as exc:
        print(f"pullthrough: config error: {exc}", file=sys.stderr)
        return 2
    if len(words) != 1:
        print(f"usage: pullthrough {args.command} [CONFIG] IMAGE", file=sys.stderr)
        return 2
    try:
        pin = parse_pin(words[0], config)
    except ConfigError as exc:
        print(f"pullthrough {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "pin":
        return asyncio.run(_pin(config, pin))
    if pin in config.pins:
        print(
            f"pullthrough unpin: {pin} is pinned by the config (mirror.pins): remove it there",
            file=sys.stderr,
        )
        return 1
    return asyncio.run(_unpin(config, pin))


def parse_pin(text: str, config: Config) -> Pin:
    """IMAGE as a Pin; ConfigError (naming IMAGE) for anything that cannot be one."""
    rest, tag = text.strip(), "latest"
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a colon before the last slash is a registry's port
        rest, tag = rest[:colon], rest[colon + 1 :]
    upstream = config.default_upstream
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        upstream, rest = first.lower(), remainder
        if upstream in DOCKER_HUB_ALIASES:
            upstream = "docker.io"
    names = {u.name for u in config.upstreams}
    return pin_entry("IMAGE", upstream, rest, [tag], names)[0]


async def _pin(config: Config, pin: Pin) -> int:
    async with open_store(config) as opened:
        await opened.index.pin(pin.upstream, pin.repository, pin.tag)
    print(f"pinned {pin}: never evicted from the next sweep on")
    return 0


async def _unpin(config: Config, pin: Pin) -> int:
    async with open_store(config) as opened:
        removed = await opened.index.unpin(pin.upstream, pin.repository, pin.tag)
    if not removed:
        print(f"pullthrough unpin: {pin} was not pinned", file=sys.stderr)
        return 1
    print(f"unpinned {pin}: evicted like other content from the next sweep on")
    return 0


async def _list(config: Config) -> int:
    async with open_store(config) as opened:
        runtime = await opened.index.pins()
    for pin in config.pins:
        print(f"{pin}\tmirror.pins")
    for upstream, repo, tag in runtime:
        pin = Pin(upstream, repo, tag)
        if pin not in config.pins:
            print(f"{pin}\tpullthrough pin")
    return 0
