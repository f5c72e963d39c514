"""One log format for the whole process, to stdout or syslog, with secrets redacted."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Any

from pylib.redact import redact

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
SYSLOG_FORMAT = "%(name)s[%(process)d]: %(levelname)s [%(threadName)s] %(message)s"

_HANDLER_ATTR = "_snapshot_processor_handler"


class RedactingFilter(logging.Filter):
    """Redacts a record's message and exception text in place.

    Runs on the handler, so records from every logger (ours and libraries') pass it,
    and anything else that reads the record afterwards sees only the redacted text.
    """

    _exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RedactingFormatter(logging.Formatter):
    """Redacts the finished line too: a last guard for text added by the formatter."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _parse_syslog_address(address: str) -> str | tuple[str, int]:
    # "/dev/log" is a socket path; "host" or "host:port" is UDP syslog.
    if address.startswith("/"):
        return address
    host, _, port = address.partition(":")
    return (host, int(port) if port else logging.handlers.SYSLOG_UDP_PORT)


def setup_logging(
    level: int | str = logging.INFO, syslog_address: str | None = None, stream: Any = None
) -> logging.Handler:
    """Install the process's one handler on the root logger, replacing an earlier one."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_ATTR, False):
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    if syslog_address:
        handler = logging.handlers.SysLogHandler(address=_parse_syslog_address(syslog_address))
        handler.setFormatter(RedactingFormatter(SYSLOG_FORMAT))
    else:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_ATTR, True)
    root.addHandler(handler)
    root.setLevel(level)
    # pika narrates every connection step at INFO; our own lines say what matters.
    logging.getLogger("pika").setLevel(logging.WARNING)
    return handler


def toggle_debug(base_level: int = logging.INFO) -> int:
    """Switch the root logger between DEBUG and ``base_level``; returns the new level."""
    root = logging.getLogger()
    new_level = base_level if root.level == logging.DEBUG else logging.DEBUG
    root.setLevel(new_level)
    return new_level
