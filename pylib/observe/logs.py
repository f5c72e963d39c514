"""One log format for the whole process, to stdout or syslog, with secrets redacted."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import unicodedata
from typing import Any

from pylib.observe.redact import redact

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
SYSLOG_FORMAT = "%(name)s[%(process)d]: %(levelname)s [%(threadName)s] %(message)s"

_HANDLER_ATTR = "_pylib_handler"
_FACTORY_ATTR = "_pylib_factory"

# Controls, format characters (bidi overrides), line and paragraph separators, unassigned,
# surrogates (names decoded with surrogateescape) and private use.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn", "Cs", "Co"})


def printable(text: object) -> str:
    """``text`` safe for one log line: what could split, reorder or hide is written as a Python
    escape (``\\n``, ``\\u202e``), a backslash doubled, so it reads back unambiguously."""
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == " " or unicodedata.category(char) not in _HIDDEN:
            out.append(char)
        elif char.isascii():
            out.append(repr(char)[1:-1])
        else:
            point = ord(char)
            out.append(f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}")
    return "".join(out)


_EXC_FORMATTER = logging.Formatter()
_REDACTED_ATTR = "_pylib_redacted"
# Where a redacted record keeps its message template (the message is formatted by then).
TEMPLATE_ATTR = "_msg_template"


def _redact_record(record: logging.LogRecord) -> None:
    """Redact the message, traceback and stack of a record, in place, once."""
    if getattr(record, _REDACTED_ATTR, False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not lose the record
        message = f"{record.msg!r} {record.args!r}"
    # The template before formatting, so Sentry can tell kinds of trouble apart.
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    setattr(record, TEMPLATE_ATTR, redact(template))
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        # Formatted now, so every handler and formatter uses this redacted text.
        record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    setattr(record, _REDACTED_ATTR, True)


class RedactingFilter(logging.Filter):
    """Redacts a record in place (for records not made by :func:`setup_logging`'s factory)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
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
    else:
        handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(RedactingFormatter(SYSLOG_FORMAT if syslog_address else LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    _install_record_factory()
    setattr(handler, _HANDLER_ATTR, True)
    root.addHandler(handler)
    root.setLevel(level)
    # pika narrates every connection step, and logs each failed attempt as several ERROR
    # lines with a traceback; the connection's owner logs one line per change instead.
    pika_level = logging.WARNING if root.level <= logging.DEBUG else logging.CRITICAL
    logging.getLogger("pika").setLevel(pika_level)
    return handler


def _install_record_factory() -> None:
    """Redact every record as it is made, before any handler (ours, Sentry's, a test's)."""
    base = logging.getLogRecordFactory()
    if getattr(base, _FACTORY_ATTR, False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        _redact_record(record)
        return record

    setattr(make, _FACTORY_ATTR, True)
    logging.setLogRecordFactory(make)


def toggle_debug(base_level: int = logging.INFO) -> int:
    """Switch the root logger between DEBUG and ``base_level``; returns the new level."""
    root = logging.getLogger()
    new_level = base_level if root.level == logging.DEBUG else logging.DEBUG
    root.setLevel(new_level)
    return new_level
