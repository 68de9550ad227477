"""Logging set-up from the config: level, text or JSON lines, access log on or off."""

from __future__ import annotations

import json
import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

from pullthrough.config import Config

ACCESS_LOGGER = "pullthrough.access"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _client_garbage(record: logging.LogRecord) -> bool:
    """aiohttp logs every request it cannot parse (a TLS hello on the plain port, bad
    header bytes) as an error with a traceback. That is the client's garbage, not our
    failure: keep one plain line at info instead."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.msg, record.args = "refused a malformed request: %s", (exc.message.strip(),)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def setup(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_formatter == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(_client_garbage)
    logging.getLogger("aiohttp.access").setLevel(
        logging.INFO if config.accesslog else logging.CRITICAL + 1
    )
