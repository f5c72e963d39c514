"""A RabbitMQ publisher thread: durable outbox first, then persistent messages with confirms.

Every message is written to the SQLite outbox before its trigger is acked (the durable
hand-off), then published from the outbox in order with publisher confirms and
removed once the broker confirmed it. While the broker is away the outbox fills and
is published, in order, once it is back; it survives a restart.

Acks go to the inproc address in the ack's ``reply_to`` (the component that made the
ack), else to ``ack_to``. A full outbox hands a message back (a ``requeue`` ack) to whoever
can retry it. A broker nack of the oldest message is retried after a growing back-off;
an outbox that cannot be written holds the message and pauses intake until it can.
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
from pylib.outbox import Outbox, OutboxEntry, OutboxError, OutboxFullError
from pylib.relay import POLL_MS, Sender, bind_pull, drain
from pylib.worker import RestartBudget, Worker

log = logging.getLogger(__name__)

PUBLISH_KIND = "amqp.publish"
DONE_KIND = "amqp.done"

PUBLISHED = Counter("amqp_messages_published_total", "Messages confirmed by the broker", ["kind"])
PUBLISH_FAILURES = Counter(
    "amqp_publish_failures_total", "Publishes the broker refused or that failed", ["reason"]
)

FLUSH_BATCH = 100
# How long one round of publishing from the outbox may take before intake gets a turn.
FLUSH_ROUND_SECONDS = 0.2
# Distinct reply addresses the publisher keeps a socket for.
MAX_ACK_ADDRESSES = 32


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
    """Pulls publish requests from ``inbox``, stores them, publishes them, sends acks back.

    ``nack_backoff`` paces retries of a message the broker refused; ``flush_timeout``
    bounds the last round of publishing at stop (what is left stays in the outbox).
    """

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
        nack_backoff: Backoff | None = None,
        flush_timeout: float = 2.0,
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
        self.nack_backoff = nack_backoff or Backoff()
        self.flush_timeout = flush_timeout
        self.periodic = periodic
        self.periodic_interval = periodic_interval
        self.connected = threading.Event()
        self._outbox: Outbox | None = None
        self._pull: zmq.Socket[bytes] | None = None
        self._ack_senders: dict[str, Sender] = {}
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._retry_at = 0.0
        self._periodic_at = 0.0
        self._flush_at = 0.0
        # A request the outbox could not store: kept here, intake paused, until it can.
        self._held: bytes | None = None
        self._held_at = 0.0
        self._store_backoff = Backoff(start=0.2, maximum=10.0)

    def on_thread_open(self) -> None:
        self._pull = bind_pull(self.inbox)

    def on_thread_close(self) -> None:
        for sender in self._ack_senders.values():
            sender.close()
        self._ack_senders.clear()
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None

    def on_thread_start(self) -> None:
        self._outbox = Outbox(self.outbox_path, self.outbox_max)
        if len(self._outbox):
            log.warning("%s: outbox holds %d messages from before", self.name, len(self._outbox))

    def on_thread_stop(self) -> None:
        self._disconnect()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def work(self) -> None:
        pull = self._pull
        assert pull is not None
        while self.should_keep_running():
            if self._held is not None:
                self._store_held()
            if self._held is None:
                # With messages waiting for the broker, look at the inbox without pausing.
                if pull.poll(0 if self._flush_due() else POLL_MS):
                    self._take_all(pull)
            elif not self._flush_due():
                self.wait_for_stop(POLL_MS / 1000)
            self._service()
        self._finish(pull)

    def _finish(self, pull: zmq.Socket[bytes]) -> None:
        """At stop: take what upstream handed over, then publish for at most ``flush_timeout``."""
        if self._held is not None:
            self._store_held(now=True)
        if self._held is None:
            self._take_all(pull)
        if self._held is not None:
            # Still not storable: it, and what waits behind it, go back to whoever can retry.
            held, self._held = self._held, None
            for data in [held, *drain(pull)]:
                self._refuse(data, "the outbox cannot be written")
        if self._connection is None or self._outbox is None:
            return
        try:
            self._flush(time.monotonic() + self.flush_timeout)
        except CONNECTION_ERRORS as exc:
            log.warning("%s: broker lost during the last flush: %s", self.name, exc)
        except OutboxError as exc:
            log.error("%s: outbox failed during the last flush: %s", self.name, exc)
        if len(self._outbox):
            log.warning(
                "%s: %d messages stay in the outbox for the next start",
                self.name,
                len(self._outbox),
            )

    # --- intake ------------------------------------------------------------------
    def _take_all(self, pull: zmq.Socket[bytes]) -> None:
        if self._held is not None:
            return
        for data in drain(pull):
            self._take(data)
            if self._held is not None:
                return  # the outbox failed: the rest waits in the socket (back-pressure)

    def _take(self, data: bytes) -> None:
        try:
            envelope = Envelope.unpack(data)
            body = envelope.body
            ack, parts = body.get("ack"), int(body.get("parts", 1))
            if envelope.kind == PUBLISH_KIND:
                request = (
                    str(body["exchange"]),
                    str(body["routing_key"]),
                    bytes(body["body"]),
                    {"message_id": envelope.id, **dict(body.get("headers") or {})},
                )
        except (EnvelopeError, KeyError, TypeError, ValueError) as exc:
            PUBLISH_FAILURES.labels("malformed").inc()
            log.error("%s: dropped a malformed request: %s", self.name, exc)
            return
        if envelope.kind == PUBLISH_KIND:
            assert self._outbox is not None
            try:
                self._outbox.append(*request)
            except OutboxFullError as exc:
                PUBLISH_FAILURES.labels("outbox_full").inc()
                self._give_back(envelope, str(exc))
                return
            except OutboxError as exc:
                self._hold(data, envelope, exc)
                return
            self._store_backoff.reset()
        elif envelope.kind != DONE_KIND:
            log.error("%s: unexpected message kind %r", self.name, envelope.kind)
            return
        self._send_ack(ack, parts)

    def _hold(self, data: bytes, envelope: Envelope, exc: OutboxError) -> None:
        """Keep a request the outbox refused for a reason other than being full; retry later."""
        PUBLISH_FAILURES.labels("outbox_error").inc()
        delay = self._store_backoff.next()
        self._held, self._held_at = data, time.monotonic() + delay
        log.error(
            "%s: could not store %s (%s); holding it, taking nothing new, trying again in %.1f s",
            self.name,
            envelope.id,
            exc,
            delay,
        )

    def _refuse(self, data: bytes, why: str) -> None:
        """At stop, with the outbox failing: hand a request back instead of storing it."""
        try:
            envelope = Envelope.unpack(data)
            parts = int(envelope.body.get("parts", 1))
        except (EnvelopeError, TypeError, ValueError) as exc:
            PUBLISH_FAILURES.labels("malformed").inc()
            log.error("%s: dropped a malformed request: %s", self.name, exc)
            return
        if envelope.kind == PUBLISH_KIND:
            self._give_back(envelope, why)
        elif envelope.kind == DONE_KIND:
            self._send_ack(envelope.body.get("ack"), parts)

    def _store_held(self, *, now: bool = False) -> None:
        if self._held is None or (not now and time.monotonic() < self._held_at):
            return
        data, self._held = self._held, None
        self._take(data)

    def _give_back(self, envelope: Envelope, why: str) -> None:
        """A message that cannot be stored: a requeue ack to whoever can retry it, else loud loss."""
        ack = envelope.body.get("ack")
        parts = int(envelope.body.get("parts", 1))
        if isinstance(ack, dict) and self._reply_address(ack) is not None:
            log.error("%s: %s; handing %s back to be retried", self.name, why, envelope.id)
            self._send_ack(ack, parts, requeue=True)
            return
        PUBLISH_FAILURES.labels("dropped").inc()
        log.error(
            "%s: %s; message %s to %s dropped: no one to hand it back to",
            self.name,
            why,
            envelope.id,
            envelope.body.get("routing_key"),
        )

    def _reply_address(self, ack: dict[str, Any]) -> str | None:
        address = ack.get("reply_to") or self.ack_to
        return address if isinstance(address, str) and address else None

    def _send_ack(self, ack: object, parts: int, *, requeue: bool = False) -> None:
        if ack is None:
            return
        if not isinstance(ack, dict):
            log.error("%s: an ack that is not a map: %r", self.name, type(ack).__name__)
            return
        address = self._reply_address(ack)
        if address is None:
            return
        sender = self._ack_senders.get(address)
        if sender is None:
            if len(self._ack_senders) >= MAX_ACK_ADDRESSES:
                PUBLISH_FAILURES.labels("ack_undelivered").inc()
                log.error("%s: too many reply addresses; no ack to %s", self.name, address)
                return
            # Acks never block: a component that is gone gets its work again another way.
            sender = self._ack_senders[address] = Sender(address, linger=0)
        if not sender.send(ack_part(ack, parts, requeue=requeue), block=False):
            PUBLISH_FAILURES.labels("ack_undelivered").inc()
            log.warning("%s: could not pass an ack to %s", self.name, address)

    # --- the broker side ---------------------------------------------------------
    def _flush_due(self) -> bool:
        return (
            self._connection is not None
            and self._outbox is not None
            and len(self._outbox) > 0
            and time.monotonic() >= self._flush_at
        )

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
            if now >= self._flush_at:
                self._flush(now + FLUSH_ROUND_SECONDS)
            if self.periodic is not None and now >= self._periodic_at:
                self._periodic_at = now + self.periodic_interval
                self._publish_periodic(self.periodic())
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
        except OutboxError as exc:
            PUBLISH_FAILURES.labels("outbox_error").inc()
            delay = self.nack_backoff.next()
            self._flush_at = time.monotonic() + delay
            log.error(
                "%s: cannot read the outbox (%s); trying again in %.1f s", self.name, exc, delay
            )

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
        self._flush_at = 0.0
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

    def _flush(self, deadline: float) -> None:
        """Publish from the outbox, oldest first, until it is empty, a nack, or ``deadline``."""
        outbox = self._outbox
        assert outbox is not None
        while len(outbox):
            for entry in outbox.peek(FLUSH_BATCH):
                if not self._publish_entry(entry):
                    return
                outbox.remove(entry.id)
                PUBLISHED.labels("event").inc()
                if time.monotonic() >= deadline:
                    return

    def _publish_entry(self, entry: OutboxEntry) -> bool:
        try:
            self._publish(
                Publication(entry.exchange, entry.routing_key, entry.body, entry.headers),
                persistent=True,
            )
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
            # Kept in the outbox, in front, and tried again after a back-off.
            PUBLISH_FAILURES.labels("nack").inc()
            delay = self.nack_backoff.next()
            self._flush_at = time.monotonic() + delay
            log.warning(
                "%s: broker refused message %d (%s); %d messages wait; trying again in %.1f s",
                self.name,
                entry.id,
                type(exc).__name__,
                len(self._outbox) if self._outbox is not None else 0,
                delay,
            )
            return False
        self.nack_backoff.reset()
        return True

    def _publish_periodic(self, publication: Publication) -> None:
        try:
            self._publish(publication, persistent=False)
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
            PUBLISH_FAILURES.labels("nack").inc()
            log.warning("%s: broker refused a periodic message: %s", self.name, exc)
            return
        PUBLISHED.labels("periodic").inc()

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
