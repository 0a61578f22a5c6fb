"""Logging: one key=value line per message, to syslog (mail facility) or to stderr.

Values are rendered with ``repr``, so a header value holding CR, LF or other control characters
cannot start a forged log line. If syslog is unreachable the filter still works and its
stdout/stderr stay clean: in filter mode those belong to the MTA.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Any, Protocol

from scatterguard.config import LogConfig

KEY_ORDER = [
    "event",
    "queue_id",
    "message_id",
    "sender",
    "rcpts",
    "size",
    "client",
    "spf",
    "dkim",
    "dmarc",
    "action",
    "verified",
    "reasons",
    "status",
    "ms",
]


class Logger(Protocol):
    """What the rest of scatterguard needs from a logger."""

    def info(self, event: str, **values: Any) -> Any: ...

    def error(self, event: str, **values: Any) -> Any: ...


class _QuietSysLogHandler(logging.handlers.SysLogHandler):
    """A syslog handler that drops records it cannot send instead of printing to stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        return


class _QuietStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that drops records it cannot write (a closed stderr)."""

    def handleError(self, record: logging.LogRecord) -> None:
        return


def setup(config: LogConfig, *, stderr: bool = False) -> Logger:
    """Build the logger: stderr when asked (``check``) or configured, syslog otherwise."""
    import structlog  # deferred: the import is a noticeable part of start-up

    stdlib = logging.getLogger("scatterguard")
    stdlib.handlers.clear()
    stdlib.propagate = False
    stdlib.setLevel(logging.INFO)
    handler: logging.Handler
    if stderr or config.target == "stderr":
        handler = _QuietStreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("scatterguard: %(message)s"))
    else:
        handler = _syslog(config)
    stdlib.addHandler(handler)
    logger: Logger = structlog.wrap_logger(
        stdlib,
        processors=[structlog.processors.KeyValueRenderer(key_order=KEY_ORDER, drop_missing=True)],
    )
    return logger


def _syslog(config: LogConfig) -> logging.Handler:
    facility = logging.handlers.SysLogHandler.facility_names[config.facility]
    try:
        handler: logging.Handler = _QuietSysLogHandler(address=config.socket, facility=facility)
    except OSError:
        # No syslog daemon (containers, these test machines): keep working, keep quiet.
        return logging.NullHandler()
    handler.setFormatter(logging.Formatter(f"scatterguard[{os.getpid()}]: %(message)s"))
    return handler
