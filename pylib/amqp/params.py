"""RabbitMQ connection settings: a plain host (guest account), or one or more amqp(s)://
URLs (the nodes of a cluster, tried in order)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TypeAlias

import pika
from prometheus_client import Counter

from pylib.observe.redact import redact, register_secret

# Errors that mean "the broker or the connection is gone": reconnect, don't crash.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)

# Both connections count here, by role: publisher or listener.
RECONNECTS = Counter("amqp_reconnects_total", "Times a connection to the broker was lost", ["role"])


def connection_parameters(
    url: str | None,
    address: str,
    *,
    connection_name: str,
    heartbeat: int = 30,
    timeout: float = 5.0,
) -> pika.ConnectionParameters:
    """Parameters for pika: ``url`` (amqp:// or amqps://, with user, password, vhost) wins.
    ``address`` is ``host`` or ``host:port`` with the default guest account."""
    params: pika.ConnectionParameters
    if url:
        params = pika.URLParameters(url)
        register_secret(params.credentials.password)
    else:
        host, _, port = address.partition(":")
        params = pika.ConnectionParameters(host=host, port=int(port) if port else 5672)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = max(timeout * 6, 30.0)
    params.socket_timeout = timeout
    params.stack_timeout = timeout * 2
    params.connection_attempts = 1
    params.client_properties = {"connection_name": connection_name}
    return params


# One broker, or the nodes of a cluster in the order they are tried.
Brokers: TypeAlias = pika.ConnectionParameters | Sequence[pika.ConnectionParameters]


def split_urls(urls: str) -> list[str]:
    """The URLs of a comma-separated list (a cluster's nodes), blanks dropped."""
    return [part.strip() for part in urls.split(",") if part.strip()]


def broker_parameters(
    urls: str | None,
    address: str,
    *,
    connection_name: str,
    heartbeat: int = 30,
    timeout: float = 5.0,
) -> list[pika.ConnectionParameters]:
    """Parameters for each URL of ``urls`` (comma-separated), else for ``address``; pika
    connects to the first that answers, so a daemon moves on when its node dies."""
    found: list[str | None] = [*split_urls(urls)] if urls else []
    return [
        connection_parameters(
            url, address, connection_name=connection_name, heartbeat=heartbeat, timeout=timeout
        )
        for url in (found or [None])
    ]


def connect(brokers: Brokers) -> pika.BlockingConnection:
    """A connection to the first of ``brokers`` that answers."""
    if isinstance(brokers, pika.connection.Parameters):
        return pika.BlockingConnection(brokers)
    return pika.BlockingConnection(list(brokers))


def describe(brokers: Brokers) -> str:
    """``host:port/vhost`` (each node's, comma-separated) for log lines: never the credentials."""
    if isinstance(brokers, pika.connection.Parameters):
        brokers = [brokers]
    return redact(", ".join(f"{p.host}:{p.port}/{p.virtual_host}" for p in brokers))


def connected_to(connection: pika.BlockingConnection, brokers: Brokers) -> str:
    """The node ``connection`` reached, described; all of ``brokers`` if pika hides it."""
    params = getattr(getattr(connection, "_impl", None), "params", None)
    return describe(params if isinstance(params, pika.connection.Parameters) else brokers)


def explain(exc: BaseException) -> str:
    """Why a connection failed, in words: pika nests the cause, and its errors often print empty."""
    names = [type(exc).__name__]
    current = exc
    for _ in range(5):  # pika nests two or three deep; a cycle must not loop
        inner = _cause(current)
        if inner is None:
            break
        current = inner
        names.append(type(current).__name__)
    text = str(current).strip() or ", ".join(repr(arg) for arg in current.args)
    # Repeated names (an error wrapped in its own kind) say nothing more.
    chain = " <- ".join(dict.fromkeys(names))
    return redact(f"{chain}: {text}" if text else chain)


def _cause(exc: BaseException) -> BaseException | None:
    candidates: list[object] = [*exc.args, getattr(exc, "exception", None)]
    attempts = getattr(exc, "exceptions", None)
    if isinstance(attempts, list | tuple) and attempts:
        candidates.append(attempts[-1])  # the last attempt's failure
    candidates.append(exc.__cause__)
    return next((item for item in candidates if isinstance(item, BaseException)), None)


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be broken."""
    with contextlib.suppress(*CONNECTION_ERRORS):
        if connection is not None and connection.is_open:
            connection.close()


class LinkLog:
    """One log line per change of a connection's state: down (with why, and the retry
    pace), each new kind of reason while down (refused, then a wrong password), and back
    (after how long). Other retries are DEBUG: a broker away for an hour costs two lines."""

    def __init__(self, logger: logging.Logger, name: str, target: str, ceiling: float) -> None:
        self._log = logger
        self._name = name
        self._target = target
        self._ceiling = ceiling
        self._down_since: float | None = None
        self._kinds: set[str] = set()  # kinds of reason logged while down
        self._attempts = 0

    def failed(self, reason: str, delay: float, consequence: str = "") -> None:
        """An attempt failed or the connection was lost; the next try is in ``delay`` s."""
        self._attempts += 1
        kind = reason.split(":", 1)[0].rsplit(" <- ", 1)[-1]  # the innermost error's type
        if kind in self._kinds:
            self._log.debug(
                "%s: broker %s still unavailable (%s); attempt %d, next in %.1f s",
                self._name,
                self._target,
                reason,
                self._attempts,
                delay,
            )
            return
        first = self._down_since is None
        if first:
            self._down_since = time.monotonic()
        self._kinds.add(kind)
        self._log.warning(
            "%s: broker %s %s (%s)%s; retrying in %.1f s, then at most every %.0f s",
            self._name,
            self._target,
            "unavailable" if first else "still unavailable, now",
            reason,
            f"; {consequence}" if consequence else "",
            delay,
            self._ceiling,
        )

    def up(self, what: str) -> None:
        """Connected: ``what`` says to what; logged with the time it was down, if it was."""
        if self._down_since is None:
            self._log.info("%s: %s", self._name, what)
            return
        self._log.info(
            "%s: %s, back after %.0f s down and %d failed attempt(s)",
            self._name,
            what,
            time.monotonic() - self._down_since,
            self._attempts,
        )
        self._down_since = None
        self._kinds.clear()
        self._attempts = 0
