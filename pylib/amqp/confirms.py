"""Publisher confirms, pipelined: send a group of messages, then wait once for all their confirms.

pika has no public API for more than one confirm in flight on a blocking channel, so this
drives ``BlockingChannel._impl`` and waits in ``BlockingChannel._flush_output``, as
``basic_publish`` does. pika is pinned in ``poetry.lock``; tests run this on a real broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

__all__ = ["ConfirmedChannel", "Outgoing"]

# exchange, routing key, body, properties
Outgoing = tuple[str, str, bytes, pika.BasicProperties]


class ConfirmedChannel:
    """A blocking channel, put in confirm mode, whose publishes may overlap; one per channel."""

    def __init__(self, channel: BlockingChannel) -> None:
        self.channel = channel
        self._impl = channel._impl  # see the module docstring
        self._sent = 0  # delivery tags count from 1 on a channel in confirm mode
        self._waiting: dict[int, None] = {}  # tags sent and not confirmed, in order
        self._outcomes: dict[int, bool] = {}
        selected: list[bool] = []
        self._impl.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.append(True)
        )
        channel._flush_output(lambda: bool(selected))

    def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Send ``messages`` in order, wait for all their confirms; True where acked.
        ``ChannelClosedByBroker`` if the broker closes the channel on one (how many before
        it were acked: :meth:`confirmed_before_close`); connection errors as ``basic_publish``."""
        first = self._sent + 1
        for exchange, routing_key, body, properties in messages:
            self._impl.basic_publish(exchange, routing_key, body, properties)
            self._sent += 1
            self._waiting[self._sent] = None
        self.channel._flush_output(lambda: not self._waiting)
        return [self._outcomes.pop(tag) for tag in range(first, self._sent + 1)]

    def confirmed_before_close(self, count: int) -> int:
        """After ``publish`` of ``count`` messages raised: how many, from the first, were acked."""
        tags = range(self._sent - count + 1, self._sent + 1)
        return next((n for n, tag in enumerate(tags) if not self._outcomes.get(tag)), len(tags))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = int(method.delivery_tag)
        if method.multiple:
            covered = [waiting for waiting in self._waiting if waiting <= tag]
        else:
            covered = [tag] if tag in self._waiting else []
        for waiting in covered:
            del self._waiting[waiting]
            self._outcomes[waiting] = acked
