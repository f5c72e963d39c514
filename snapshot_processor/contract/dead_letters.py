"""Triggers the broker gave up on: delivered TRIGGER_MAX_DELIVERIES times without being
settled, moved by a quorum trigger queue to its dead-letter queue. The daemon counts them
and says so; ``snapshot-processor dead-triggers`` lists them and sends them back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Gauge

from pylib.observe.logs import printable
from snapshot_processor.config import Settings
from snapshot_processor.contract import exchanges

log = logging.getLogger(__name__)

DEAD_TRIGGERS = Gauge(
    "trigger_dead_letters", "Triggers waiting in the dead-letter queue (seen by the listener)"
)


def watcher(settings: Settings) -> Callable[[BlockingChannel], list[str]]:
    """For the trigger listener: the dead-letter queue's depth, as a gauge and a warning."""
    queue = exchanges.dead_letter_queue(settings)
    said = [0]  # the depth last logged, so a steady queue is logged once

    def watch(channel: BlockingChannel) -> list[str]:
        depth = channel.queue_declare(queue, passive=True).method.message_count
        DEAD_TRIGGERS.set(depth)
        if depth > said[0]:
            log.error(
                "%d trigger(s) in the dead-letter queue %s, each delivered %d times without "
                "being settled; 'snapshot-processor dead-triggers' lists them",
                depth,
                queue,
                settings.broker.trigger_max_deliveries,
            )
        said[0] = depth
        if not depth:
            return []
        return [
            f"{depth} trigger(s) in the dead-letter queue {queue}, given up on after "
            f"{settings.broker.trigger_max_deliveries} deliveries; "
            "'snapshot-processor dead-triggers' lists them"
        ]

    return watch


@dataclass(frozen=True)
class DeadTrigger:
    """One dead-lettered trigger, as the broker keeps it."""

    tag: int
    body: bytes
    routing_key: str  # the one it was first sent with
    exchange: str
    reason: str
    died: datetime | None
    times: int  # dead-lettered this often (replayed and dead again)

    def summary(self) -> str:
        """One line: when, why, where it was sent and the start of its body (printable)."""
        when = self.died.isoformat(timespec="seconds") if self.died else "unknown time"
        count = f" ({self.times} times)" if self.times > 1 else ""
        text = printable(self.body[:120].decode("utf-8", "replace"))
        return f"{when} {self.reason}{count} {self.exchange}/{self.routing_key}: {text}"


def _read(tag: int, properties: pika.BasicProperties, body: bytes, queue: str) -> DeadTrigger:
    headers: dict[str, Any] = properties.headers or {}
    deaths = headers.get("x-death") or [{}]
    death: dict[str, Any] = deaths[0] if isinstance(deaths[0], dict) else {}
    keys = death.get("routing-keys") or [queue]
    died = death.get("time")
    times = death.get("count")
    return DeadTrigger(
        tag=tag,
        body=body,
        routing_key=str(keys[0]),
        exchange=str(death.get("exchange", "")),
        reason=str(death.get("reason", "unknown")),
        died=died if isinstance(died, datetime) else None,
        times=times if isinstance(times, int) else 1,
    )


def fetch(channel: BlockingChannel, settings: Settings, limit: int) -> Iterator[DeadTrigger]:
    """Up to ``limit`` dead triggers, unacked: they return to the queue when the channel
    closes, unless acked by the caller."""
    queue = exchanges.dead_letter_queue(settings)
    for _ in range(limit):
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            return
        yield _read(method.delivery_tag, properties, body, queue)
