"""Triggers the broker gave up on: delivered TRIGGER_MAX_DELIVERIES times without being
settled, moved by a quorum trigger queue to its dead-letter queue. The daemon counts them
and says so; ``snapshot-processor dead-triggers`` lists them and sends them back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import pika
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter, Gauge

from pylib.observe.logs import printable
from pylib.observe.redact import redact
from snapshot_processor.config import Settings
from snapshot_processor.contract import exchanges

log = logging.getLogger(__name__)

DEAD_TRIGGERS = Gauge(
    "trigger_dead_letters", "Triggers waiting in the dead-letter queue (seen by the listener)"
)
TRIGGERS_EXPIRED = Counter(
    "triggers_expired_total", "Triggers that expired in a quorum trigger queue, dropped"
)
EXPIRED = "expired"
# Dead letters looked at per watch: those kept are held unacked until the look ends.
SWEEP_BATCH = 50


class TriggerQueueWatch:
    """The trigger listener's set-up and watch: declares the queue (with a quorum queue's
    dead-letter queue), and says when the delivery limit is not in force and when triggers
    were given up on: the depth as a gauge, an ERROR line when it grows, a warning."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dead = exchanges.dead_letter_queue(settings)
        self.unlimited: str | None = None
        self._said = 0  # the depth last logged, so a steady queue is logged once

    def declare(self, channel: BlockingChannel) -> str:
        declared = exchanges.declare_trigger_queue(channel, self.settings)
        if declared.unlimited is not None and declared.unlimited != self.unlimited:
            log.warning("%s", declared.unlimited)
        self.unlimited = declared.unlimited
        return declared.name

    def watch(self, channel: BlockingChannel) -> list[str]:
        found = [self.unlimited] if self.unlimited is not None else []
        # On a channel of its own: a refusal (the queue deleted by hand) closes only that,
        # and what it takes and does not ack returns when it closes.
        own = channel.connection.channel()
        try:
            held = self._sweep(own)
            depth = held + own.queue_declare(self.dead, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            return [*found, f"the dead-letter queue {self.dead} cannot be read: {exc.reply_text}"]
        finally:
            if own.is_open:
                own.close()
        DEAD_TRIGGERS.set(depth)
        limit = self.settings.broker.trigger_max_deliveries
        if depth > self._said:
            log.error(
                "%d trigger(s) in the dead-letter queue %s, each delivered %d times without "
                "being settled; 'snapshot-processor dead-triggers' lists them",
                depth,
                self.dead,
                limit,
            )
        self._said = depth
        if depth:
            found.append(
                f"{depth} trigger(s) in the dead-letter queue {self.dead}, given up on after "
                f"{limit} deliveries; 'snapshot-processor dead-triggers' lists them"
            )
        return found

    def _sweep(self, channel: BlockingChannel) -> int:
        """Drops the triggers that expired while they waited: the broker dead-letters them
        too, and no binding can tell them apart, but their senders meant them to go (a
        classic queue drops them). Returns how many others it holds (unacked)."""
        held = dropped = 0
        for _ in range(SWEEP_BATCH):
            method, properties, _ = channel.basic_get(self.dead, auto_ack=False)
            if method is None:
                break
            if death_reason(properties) == EXPIRED:
                channel.basic_ack(method.delivery_tag)
                dropped += 1
            else:
                held += 1
        if dropped:
            TRIGGERS_EXPIRED.inc(dropped)
            log.info(
                "%d trigger(s) expired while they waited in %s and were dropped, as their "
                "senders ask",
                dropped,
                self.settings.queue_name,
            )
        return held


def death_reason(properties: pika.BasicProperties) -> str:
    """Why the broker dead-lettered a message: ``delivery_limit``, ``expired``, ..."""
    headers: dict[str, Any] = properties.headers or {}
    first = headers.get("x-first-death-reason")
    if isinstance(first, str):
        return first
    deaths = headers.get("x-death") or [{}]
    death = deaths[0] if isinstance(deaths[0], dict) else {}
    return str(death.get("reason", "unknown"))


@dataclass(frozen=True)
class DeadTrigger:
    """One dead-lettered trigger, as the broker keeps it."""

    tag: int
    body: bytes
    routing_key: str  # the one it was first sent with
    exchange: str
    reason: str
    died: datetime | None
    times: int  # dead-lettered this often
    properties: pika.BasicProperties

    def summary(self) -> str:
        """One line: when, why, where it was sent and what it asked (never its camera
        parameters, which may hold a password)."""
        when = self.died.isoformat(timespec="seconds") if self.died else "unknown time"
        count = f" ({self.times} times)" if self.times > 1 else ""
        return (
            f"{when} {self.reason}{count} {self.exchange}/{self.routing_key}: "
            f"{describe_trigger(self.body)}"
        )


def describe_trigger(body: bytes) -> str:
    """The camera and sensor a trigger names, and its time; only those fields."""
    try:
        trigger = msgpack.unpackb(body, raw=False)
        output, sensor = trigger.get("output_triggered") or {}, trigger.get("active_input") or {}
        camera, source = output.get("device_key"), sensor.get("device_key")
        stamp = trigger.get("timestamp")
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
        return f"{len(body)} bytes that are not a trigger"
    said = [f"camera {printable(str(camera))!r}" if camera is not None else "no camera"]
    if source is not None:
        said.append(f"from {printable(str(source))!r}")
    if isinstance(stamp, int | float):
        said.append(f"at {datetime.fromtimestamp(stamp, UTC).isoformat(timespec='seconds')}")
    return redact(" ".join(said))


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
        reason=death_reason(properties),
        died=died if isinstance(died, datetime) else None,
        times=times if isinstance(times, int) else 1,
        properties=properties,
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


def replay_properties(dead: DeadTrigger) -> pika.BasicProperties:
    """The trigger's own properties for its replay: persistent, without the broker's death
    records or the sender's expiration (it would only expire again)."""
    headers = {
        key: value
        for key, value in (dead.properties.headers or {}).items()
        if not key.startswith(("x-death", "x-first-death", "x-last-death", "x-delivery-count"))
    }
    return pika.BasicProperties(
        content_type=dead.properties.content_type,
        content_encoding=dead.properties.content_encoding,
        headers=headers or None,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=dead.properties.message_id,
        timestamp=dead.properties.timestamp,
    )
