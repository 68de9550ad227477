"""Command line: ``pullthrough serve [CONFIG]`` and ``pullthrough check CONFIG``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from typing import NoReturn

from aiohttp import web

from pullthrough import __version__
from pullthrough.commands.offline import IndexUnavailable
from pullthrough.config import Config, ConfigError, load
from pullthrough.logs import setup as setup_logging
from pullthrough.server.disconnects import DISCONNECTS_KEY
from pullthrough.server.limits import ConnectionGuard
from pullthrough.server.reload import reload
from pullthrough.server.shutdown import drain

log = logging.getLogger("pullthrough")

# Operator commands: pullthrough.commands.<name> has add_arguments(parser) and run(config, args).
COMMANDS = {
    "gc": "remove expired and least recently used content now (--dry-run: only say what)",
    "ls": "list cached repositories and tags: digest, size, last access (--json)",
    "du": "store size by upstream and repository, and on disk (--json)",
    "verify": "re-hash every stored object; --repair removes corrupt ones",
    "health": "exit 0 if the mirror of this config answers (for HEALTHCHECK)",
    "warm": "prefetch images into the cache (directly, or through a running --mirror)",
    "offline": "switch an upstream off (serve only what is cached) or on: UPSTREAM on|off",
    "pin": "keep IMAGE (tag globs allowed: alpine:3.*) for good: never evicted",
    "unpin": "stop keeping IMAGE for good (pins made by pullthrough pin)",
    "pins": "list pinned images (mirror.pins and pullthrough pin)",
    "sync": "run every mirror.sync entry once now (--dry-run: only say what would be fetched)",
}
# Commands whose module is not named after them (commands.offline opens the store for the
# others: it is about running without the server, not about the offline switch).
_MODULES = {
    "offline": "offline_switch",
    "pin": "pinning",
    "unpin": "pinning",
    "pins": "pinning",
}

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs "%{User-Agent}i"'


def entry() -> NoReturn:
    """The console script (and ``python -m pullthrough``): ``main``, then exit.

    With ``storage.s3`` the S3 client (obstore: Rust, with a tokio runtime's worker
    threads) may still be running a thread when Python finalizes, and it then aborts the
    process: SIGABRT after a command that had succeeded and printed its result (seen in
    about 1 run in 15). Once our output is flushed nothing is left to finalize that
    matters, so the process ends without finalization then."""
    code = main()
    if "obstore" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pullthrough", description="A pull-through cache for container registries."
    )
    parser.add_argument("--version", action="version", version=f"pullthrough {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the mirror")
    serve.add_argument("config", nargs="?", help="distribution-style config.yml (optional)")
    check = sub.add_parser("check", help="validate a config file without serving")
    check.add_argument("config", help="distribution-style config.yml")
    commands = {
        name: importlib.import_module(f"pullthrough.commands.{_MODULES.get(name, name)}")
        for name in COMMANDS
    }
    for name, module in commands.items():
        command = sub.add_parser(name, help=COMMANDS[name])
        command.add_argument("config", nargs="?", help="distribution-style config.yml (optional)")
        module.add_arguments(command)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].endswith((".yml", ".yaml")):
        # registry:2's entrypoint takes a bare config path as "serve it" (`docker run
        # registry:2 /etc/my.yml`); so does this image's, so that such a line still works.
        argv = ["serve", *argv]
    args = parser.parse_args(argv)

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"pullthrough: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        upstreams = ", ".join(f"{u.name} ({u.url})" for u in config.upstreams)
        print(
            f"config OK: upstreams {upstreams}, default {config.default_upstream}, "
            f"storage {config.root}, listening on {config.host}:{config.port}"
        )
        # How each mirror.access pattern was read (relative ones gain the default registry).
        for i, rule in enumerate(config.access):
            who = "every client" if rule.users is None else ", ".join(rule.users)
            actions = "/".join(rule.actions)
            print(f"mirror.access[{i}]: {who} may {actions} {', '.join(rule.repositories)}")
        if config.hosted is not None:
            hosted = config.hosted
            print(
                f"mirror.hosted: {', '.join(f'{p}/**' for p in hosted.prefixes)} hosted "
                f"(manifests up to {hosted.max_manifest_size} bytes, deletes "
                f"{'enabled' if hosted.delete_enabled else 'disabled'})"
            )
        for upstream in config.upstreams:
            if upstream.offline:
                print(f"upstream {upstream.name} starts offline (pullthrough offline switches it)")
        for pin in config.pins:
            print(f"mirror.pins: {pin} is kept for good")
        for entry in config.sync:
            print(f"{entry.key}: syncs {entry.describe()}")
        if config.s3 is not None and _check_bucket(config) != 0:
            return 1
        return _check_policy(config)
    if args.command in commands:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        try:
            result: int = commands[args.command].run(config, args)
        except IndexUnavailable as exc:
            print(f"pullthrough {args.command}: {exc}", file=sys.stderr)
            return 2
        return result
    setup_logging(config)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    return _run(config)


def _check_bucket(config: Config) -> int:
    """storage.s3: connect to the bucket and try what the mirror does with it (list,
    write, read back, delete a small object); never prints a credential."""
    import asyncio

    from pullthrough.errors import BucketUnavailable
    from pullthrough.store.bucket import Bucket

    s3 = config.s3
    assert s3 is not None
    where = f"bucket {s3.bucket} at {s3.endpoint}" + (f" under {s3.prefix}/" if s3.prefix else "")
    bucket = Bucket(s3)
    creds = (
        "accesskey from the config"
        if s3.access_key
        else (bucket.config.credentials_from or "the AWS credential chain")
    )
    print(f"storage.s3: {where} ({creds}; local cache {s3.local_path}, {s3.local_cache} bytes)")

    async def probe() -> list[str]:
        return await bucket.probe()

    try:
        lines = asyncio.run(probe())
    except BucketUnavailable as exc:
        print(exc.message)
        print(f"storage.s3: the {where} cannot be used", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def _check_policy(config: Config) -> int:
    """Print ``mirror.policy`` as understood, and flag the rules that can never match."""
    from pullthrough.mirror.policy import Policy, never_matching

    policy = Policy(config.policy)
    flagged = dict(
        (rule.index, reason)
        for rule, reason in never_matching(
            policy, [u.name for u in config.upstreams], any_upstream=config.allow_any_upstream
        )
    )
    for rule in policy.rules:
        print(f"{rule.key}: {rule.describe()}")
        if rule.index in flagged:
            print(f"warning: {rule.key} can never match: {flagged[rule.index]}", file=sys.stderr)
    if policy.active:
        print("mirror.policy: no rule matches: allow")
    return 0


def _run(config: Config) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(_serve(config))
    return uvloop.run(_serve(config))


async def _serve(config: Config) -> int:
    from pullthrough.server.app import build_app
    from pullthrough.server.identity import hide_server_software
    from pullthrough.server.routes import MIRROR_KEY

    hide_server_software()
    app = build_app(config)
    runner = web.AppRunner(
        app,
        access_log_format=ACCESS_LOG_FORMAT,
        access_log=logging.getLogger("aiohttp.access") if config.accesslog else None,
        handle_signals=False,
        # SIGTERM: transfers in flight get this long to finish, then they are cut off.
        shutdown_timeout=config.drain_timeout,
        keepalive_timeout=config.limits.idle_timeout,
        max_line_size=config.limits.max_line_size,
        max_field_size=config.limits.max_field_size,
        max_headers=config.limits.max_headers,
    )
    try:
        await runner.setup()  # starts the mirror
    except ConfigError as exc:  # found only when starting, e.g. a password redis refused
        log.error("config error: %s", exc)
        await runner.cleanup()
        return 2
    assert runner.server is not None
    guard = ConnectionGuard(runner.server, config.limits, app[DISCONNECTS_KEY])
    guard.start()
    tls = config.ssl_context()
    site = web.TCPSite(
        runner,
        host=config.host,
        port=config.port,
        ssl_context=tls,
        reuse_address=True,
        backlog=1024,
    )
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        await guard.stop()
        await runner.cleanup()
        return 1
    debug_runner = await _start_debug(app, config)
    scheme = "https" if config.tls_certificate else "http"
    log.info(
        "pullthrough %s listening on %s://%s:%d", __version__, scheme, config.host, config.port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()  # held so a reload is not garbage-collected

    def on_hup() -> None:
        task = asyncio.ensure_future(reload(config, tls, app[MIRROR_KEY].policy_file))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    log.info("shutting down: draining transfers in flight for up to %gs", config.drain_timeout)
    if debug_runner is not None:
        await debug_runner.cleanup()
    await guard.stop()
    return 0 if await drain(runner, config.drain_timeout) else 1


async def _start_debug(app: web.Application, config: Config) -> web.AppRunner | None:
    """The debug server on http.debug.addr (health, metrics), if configured."""
    if config.debug_addr is None:
        return None
    from pullthrough.server.debug import build_debug_app
    from pullthrough.server.routes import MIRROR_KEY

    runner = web.AppRunner(
        build_debug_app(app[MIRROR_KEY], config.metrics_path),
        access_log=None,
        handle_signals=False,
    )
    await runner.setup()
    host, port = config.debug_addr
    await web.TCPSite(runner, host=host, port=port, reuse_address=True).start()
    log.info(
        "debug server on http://%s:%d (health: /debug/health%s)",
        host,
        port,
        f", metrics: {config.metrics_path}" if config.metrics_path else "",
    )
    return runner
