"""A RabbitMQ publisher thread: durable outbox first, then persistent messages with confirms.

Every message is written to the SQLite outbox before its trigger is acked (the durable
hand-off), then published from the outbox in order with publisher confirms and
removed once the broker confirmed it. While the broker is away the outbox fills and
is published, in order, once it is back; it survives a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import zmq
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

from pylib.amqp import CONNECTION_ERRORS, close_quietly, describe
from pylib.amqp_listener import RECONNECTS, ack_part
from pylib.backoff import Backoff
from pylib.envelope import Envelope, EnvelopeError
from pylib.outbox import Outbox, OutboxEntry, OutboxFullError
from pylib.relay import POLL_MS, Sender
from pylib.worker import RestartBudget, Worker
from pylib.zmqctx import shared_context

log = logging.getLogger(__name__)

PUBLISH_KIND = "amqp.publish"
DONE_KIND = "amqp.done"

PUBLISHED = Counter("amqp_messages_published_total", "Messages confirmed by the broker", ["kind"])
PUBLISH_FAILURES = Counter(
    "amqp_publish_failures_total", "Publishes the broker refused or that failed", ["reason"]
)

FLUSH_BATCH = 100


@dataclass(frozen=True)
class Publication:
    """One message to publish: where to, the bytes, and AMQP properties as headers."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def publish_envelope(
    publication: Publication, ack: dict[str, Any] | None, parts: int = 1, msg_id: str | None = None
) -> Envelope:
    """The envelope that asks the publisher to publish ``publication`` and then ack ``ack``."""
    body = {
        "exchange": publication.exchange,
        "routing_key": publication.routing_key,
        "body": publication.body,
        "headers": publication.headers,
        "ack": ack,
        "parts": parts,
    }
    return Envelope(PUBLISH_KIND, body) if msg_id is None else Envelope(PUBLISH_KIND, body, msg_id)


def done_envelope(ack: dict[str, Any] | None, parts: int = 1) -> Envelope:
    """The envelope saying one part of a delivery produced nothing to publish."""
    return Envelope(DONE_KIND, {"ack": ack, "parts": parts})


class AmqpPublisher(Worker):
    """Pulls publish requests from ``inbox``, stores them, publishes them, sends acks back."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        params: pika.ConnectionParameters,
        setup: Callable[[BlockingChannel], object],
        outbox_path: Path,
        inbox: str,
        ack_to: str | None,
        outbox_max: int = 10_000,
        backoff: Backoff | None = None,
        periodic: Callable[[], Publication] | None = None,
        periodic_interval: float = 5.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.params = params
        self.setup = setup
        self.outbox_path = outbox_path
        self.outbox_max = outbox_max
        self.inbox = inbox
        self.ack_to = ack_to
        self.backoff = backoff or Backoff()
        self.periodic = periodic
        self.periodic_interval = periodic_interval
        self.connected = threading.Event()
        self._outbox: Outbox | None = None
        self._pull: zmq.Socket[bytes] | None = None
        self._acks: Sender | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._retry_at = 0.0
        self._periodic_at = 0.0

    def on_thread_start(self) -> None:
        self._outbox = Outbox(self.outbox_path, self.outbox_max)
        self._pull = shared_context().socket(zmq.PULL)
        self._pull.bind(self.inbox)
        if self.ack_to is not None:
            # Acks never block: once the listener is gone its deliveries come again anyway.
            self._acks = Sender(self.ack_to, linger=0)
        if len(self._outbox):
            log.warning("%s: outbox holds %d messages from before", self.name, len(self._outbox))

    def on_thread_stop(self) -> None:
        self._disconnect()
        for closer in (self._acks, self._outbox):
            if closer is not None:
                closer.close()
        self._acks = None
        self._outbox = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None

    def work(self) -> None:
        pull = self._pull
        assert pull is not None
        while self.should_keep_running():
            if pull.poll(POLL_MS):
                self._take_all(pull)
            self._service()
        self._take_all(pull)  # what upstream handed over before the stop
        if self._connection is not None:
            self._flush()

    # --- intake ------------------------------------------------------------------
    def _take_all(self, pull: zmq.Socket[bytes]) -> None:
        while True:
            try:
                data = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._take(data)

    def _take(self, data: bytes) -> None:
        try:
            envelope = Envelope.unpack(data)
        except EnvelopeError as exc:
            PUBLISH_FAILURES.labels("malformed").inc()
            log.error("%s: dropped a malformed request: %s", self.name, exc)
            return
        body = envelope.body
        ack, parts = body.get("ack"), int(body.get("parts", 1))
        if envelope.kind == PUBLISH_KIND:
            assert self._outbox is not None
            headers = {"message_id": envelope.id, **body.get("headers", {})}
            try:
                self._outbox.append(body["exchange"], body["routing_key"], body["body"], headers)
            except OutboxFullError as exc:
                PUBLISH_FAILURES.labels("outbox_full").inc()
                log.error("%s: %s; giving the trigger back to the broker", self.name, exc)
                self._send_ack(ack, parts, requeue=True)
                return
        elif envelope.kind != DONE_KIND:
            log.error("%s: unexpected message kind %r", self.name, envelope.kind)
            return
        self._send_ack(ack, parts)

    def _send_ack(self, ack: dict[str, Any] | None, parts: int, *, requeue: bool = False) -> None:
        if (
            ack is not None
            and self._acks is not None
            and not self._acks.send(ack_part(ack, parts, requeue=requeue), block=False)
        ):
            log.warning("%s: could not pass an ack to the listener", self.name)

    # --- the broker side ---------------------------------------------------------
    def _service(self) -> None:
        now = time.monotonic()
        if self._connection is None:
            if now < self._retry_at:
                return
            if not self._connect():
                return
        try:
            assert self._connection is not None
            self._connection.process_data_events(0)
            self._flush()
            if self.periodic is not None and now >= self._periodic_at:
                self._periodic_at = now + self.periodic_interval
                self._publish(self.periodic(), persistent=False)
                PUBLISHED.labels("periodic").inc()
        except CONNECTION_ERRORS as exc:
            self._lost(exc)

    def _connect(self) -> bool:
        try:
            self._connection = pika.BlockingConnection(self.params)
            self._channel = self._connection.channel()
            self.setup(self._channel)
            self._channel.confirm_delivery()
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return False
        self.backoff.reset()
        self.connected.set()
        log.info("%s: connected to %s", self.name, describe(self.params))
        return True

    def _lost(self, exc: BaseException) -> None:
        was_connected = self.connected.is_set()
        self._disconnect()
        delay = self.backoff.next()
        self._retry_at = time.monotonic() + delay
        if was_connected:
            RECONNECTS.labels("publisher").inc()
        depth = len(self._outbox) if self._outbox is not None else 0
        log.warning(
            "%s: broker %s unavailable (%s: %s); %d messages wait in the outbox; retrying in %.1f s",
            self.name,
            describe(self.params),
            type(exc).__name__,
            exc,
            depth,
            delay,
        )

    def _disconnect(self) -> None:
        self.connected.clear()
        close_quietly(self._connection)
        self._connection = self._channel = None

    def _flush(self) -> None:
        outbox = self._outbox
        assert outbox is not None
        while len(outbox):
            for entry in outbox.peek(FLUSH_BATCH):
                if not self._publish_entry(entry):
                    return
                outbox.remove(entry.id)
                PUBLISHED.labels("event").inc()

    def _publish_entry(self, entry: OutboxEntry) -> bool:
        try:
            self._publish(
                Publication(entry.exchange, entry.routing_key, entry.body, entry.headers),
                persistent=True,
            )
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
            # Kept in the outbox and tried again on the next round.
            PUBLISH_FAILURES.labels("nack").inc()
            log.warning("%s: broker refused message %d: %s", self.name, entry.id, exc)
            return False
        return True

    def _publish(self, publication: Publication, *, persistent: bool) -> None:
        assert self._channel is not None
        headers = publication.headers
        properties = pika.BasicProperties(
            content_type=headers.get("content_type", "application/msgpack"),
            message_id=headers.get("message_id"),
            timestamp=int(time.time()),
            delivery_mode=pika.DeliveryMode.Persistent
            if persistent
            else pika.DeliveryMode.Transient,
        )
        self._channel.basic_publish(
            publication.exchange, publication.routing_key, publication.body, properties
        )
