"""``pullthrough offline [CONFIG] UPSTREAM [on|off]``: switch an upstream off (never
contacted; only cached content served) or on again, at run time.

The switch is kept in the index the servers of CONFIG read (every replica's, in cluster
mode), which follow it within about a second; it overrides the upstream's ``offline`` in
the config until switched again. Without on|off it prints the upstream's state.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pullthrough.commands.beside import config_and_words, config_may_be_a_word
from pullthrough.commands.offline import open_store
from pullthrough.config import Config, ConfigError

STATES = {"on": True, "off": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # ``pullthrough.cli`` gives every command an optional CONFIG ahead of its own
    # positionals; followed by UPSTREAM, argparse would read ``offline ghcr.io on`` as
    # CONFIG=ghcr.io. So the words are taken together and told apart in ``run``.
    config_may_be_a_word(parser)
    parser.add_argument("words", nargs="*", metavar="UPSTREAM [on|off]")


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        config, words = config_and_words(config, args, list(args.words))
    except ConfigError as exc:
        print(f"pullthrough: config error: {exc}", file=sys.stderr)
        return 2
    if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1] not in STATES):
        print("usage: pullthrough offline [CONFIG] UPSTREAM [on|off]", file=sys.stderr)
        return 2
    name = words[0].strip().lower()
    known = {u.name: u for u in config.upstreams}
    if name not in known:
        print(
            f"pullthrough offline: {name!r} is no configured upstream "
            f"(configured: {', '.join(sorted(known))})",
            file=sys.stderr,
        )
        return 2
    state = STATES[words[1]] if len(words) == 2 else None
    return asyncio.run(_switch(config, name, state, configured=known[name].offline))


async def _switch(config: Config, name: str, state: bool | None, *, configured: bool) -> int:
    async with open_store(config) as opened:
        if state is not None:
            await opened.index.switch_offline(name, state)
            print(
                f"upstream {name} is {'offline' if state else 'online'} "
                f"(servers using {opened.where} follow within about a second)"
            )
            return 0
        switches = await opened.index.offline_switches()
    if name in switches:
        source = "set by pullthrough offline"
        offline = switches[name]
    else:
        source = "from the config"
        offline = configured
    print(f"upstream {name} is {'offline' if offline else 'online'} ({source})")
    return 0
