"""Servers the tests run on loopback, and the plumbing they share.

* ``ThreadedApp``: an aiohttp app served by its own event loop in a daemon thread
  (``proxy.RecordingProxy``, ``tokens.TokenIssuer``).
* ``HandlerServer``: an ``http.server`` handler served from a daemon thread
  (``cdn.Cdn``, ``evil.EvilUpstream``).
* ``Records``: a log the server thread appends to and the test thread reads.
* ``spawn_logged``, ``wait_answering``, ``stop_process``, ``kill_process``: a server
  *process* started with its output in a log file, waited for until ``GET /v2/``
  answers, and stopped by its PID (``registry.Registry``, ``mirror.MirrorProcess``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar

from aiohttp import web

from .net import LOOPBACK, free_port

T = TypeVar("T")


class Records(Generic[T]):
    """A list appended to from a server thread and read from the test thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[T]:
        """A copy of the records so far, oldest first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ---------------------------------------------------------------------------- in a thread


class ThreadedApp:
    """An aiohttp app on ``<address>:<port>`` served by its own event loop in a daemon thread.

    Callers rely on: the first ``start()`` binds ``port`` (``0`` picks a free one) and every
    later ``start()`` binds the same one again; ``start()`` returns self, raises if the port
    cannot be bound or the app is not serving within ``timeout`` seconds, and is idempotent
    while running; ``stop()`` is idempotent and bounded by ``timeout``; ``with`` starts, then
    stops. Subclasses build their app in ``_make_app`` (on the server loop) and may release
    more in ``_shutdown`` (calling ``super()``).
    """

    def __init__(self, *, address: str = LOOPBACK, port: int = 0) -> None:
        self._address = address
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """Bound port (valid after ``start()``; kept across ``stop()``/``start()``)."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._port

    @property
    def address(self) -> str:
        """The loopback IP address the server binds (e.g. ``127.0.0.1``)."""
        return self._address

    @property
    def host(self) -> str:
        """``<address>:PORT``."""
        return f"{self._address}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://<address>:PORT`` (no trailing slash)."""
        return f"http://{self.host}"

    @property
    def url(self) -> str:
        """Where clients go; ``base_url`` unless a subclass says otherwise."""
        return self.base_url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def _make_app(self) -> web.Application:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> Self:
        """Bind the port and serve in a daemon thread. Idempotent while running."""
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._address, self._port))
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"{type(self).__name__}:{self._port}", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(sock), loop).result(timeout)
        except BaseException:
            sock.close()
            self.stop()
            raise
        return self

    async def _serve(self, sock: socket.socket) -> None:
        app = await self._make_app()
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handle_signals=False
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread (bounded by ``timeout``). Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            # Best effort: the loop is stopped below anyway.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = None
        self._thread = None

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up mid-answer is what several tests provoke (the mirror stops
        # reading an oversized body): not worth a traceback in the test output.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class QuietHandler(BaseHTTPRequestHandler):
    """A keep-alive handler that logs nothing and answers through ``send()``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """Answer ``status`` with ``headers`` and ``body`` (no body for HEAD, with its
        length unless ``headers`` gives one: a HEAD may announce what a GET would send)."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class HandlerServer:
    """An ``http.server`` handler served on ``http://<host>:<port>`` from a daemon thread.

    Callers rely on: ``host`` (an IP address) and ``port`` (free a moment before) are fixed
    at construction; ``start()`` returns self and is idempotent; ``stop()`` shuts the server
    down and closes its socket, and is idempotent; ``with`` starts, then stops. Subclasses
    return their handler class from ``_handler()``.
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = free_port(host)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """``http://<host>:<port>`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            server = _Server((self.host, self.port), self._handler())
            threading.Thread(
                target=server.serve_forever, name=f"{type(self).__name__}:{self.port}", daemon=True
            ).start()
            self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- processes


def spawn_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str],
    cwd: Path,
    banner: str | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdin closed and stdout+stderr appended to ``log_path``.

    ``banner``, if given, is written to the log as a line first. ``new_session`` puts the
    process in a session of its own (signals to the test run's group do not reach it).
    """
    with open(log_path, "ab") as log:
        if banner is not None:
            log.write(banner.encode() + b"\n")
            log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=new_session,
        )


def v2_status(url: str, timeout: float = 1.0) -> int | None:
    """Status of ``GET <url>/v2/``, or ``None`` if nothing answered.

    ``url`` is ``http://`` or ``https://`` (the certificate is not checked).
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or LOOPBACK
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_answering(
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    name: str,
    timeout: float,
    log_tail: Callable[[], str],
    error: type[Exception] = RuntimeError,
    stop_timeout: float = 10.0,
) -> None:
    """Wait until ``GET <url>/v2/`` answers 200 or 401 (401: up, asking for credentials).

    Raises ``error`` naming ``name`` with ``log_tail()`` if ``proc`` exits first, or if it
    does not answer within ``timeout`` seconds (then ``proc`` is stopped first).
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise error(f"{name} exited with {proc.returncode} during startup:\n{log_tail()}")
        status = v2_status(url)
        if status in (200, 401):
            return
        if time.monotonic() >= deadline:
            stop_process(proc, stop_timeout)
            raise error(
                f"{name} did not answer GET /v2/ within {timeout}s "
                f"(last status {status}):\n{log_tail()}"
            )
        time.sleep(0.05)


def stop_process(
    proc: subprocess.Popen[bytes] | None, timeout: float = 10.0, *, kill_timeout: float = 5.0
) -> None:
    """SIGTERM ``proc`` by PID and wait ``timeout`` s, then SIGKILL it and wait ``kill_timeout`` s.

    Does nothing if ``proc`` is ``None`` or has exited.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(kill_timeout)


def kill_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGKILL ``proc`` by PID (a crash: no shutdown code runs) and wait for it to go."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout)
