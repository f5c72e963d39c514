"""RabbitMQ connection settings: a plain host (guest account) or a full amqp(s):// URL."""

from __future__ import annotations

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

    ``address`` is ``host`` or ``host:port`` with the default guest account, as the
    original daemon's ``RABBITMQ_SERVER_ADDRESS`` was.
    """
    params: pika.ConnectionParameters
    if url:
        parsed = pika.URLParameters(url)
        register_secret(parsed.credentials.password)
        params = parsed
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


def describe(params: pika.ConnectionParameters) -> str:
    """``host:port/vhost`` for log lines: never the credentials."""
    return redact(f"{params.host}:{params.port}/{params.virtual_host}")


def explain(exc: BaseException) -> str:
    """Why a connection failed, in words: pika wraps the real cause in ``args``, or in
    ``exception`` / ``exceptions`` attributes, and its own exceptions often have no text
    (``AMQPConnectionError(AMQPConnectorSocketConnectError())`` prints as nothing)."""
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
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except CONNECTION_ERRORS:
        pass
