"""A RabbitMQ consumer thread: manual acks after durable hand-off, reconnect with back-off.

Each delivery is decoded into an :class:`Envelope` and pushed down the chain with an
``ack`` reference whose ``reply_to`` is this thread's ack inbox. The last stage sends
:func:`ack_part` envelopes back there; the delivery is acked on the broker only when all
its parts are done. A part that asks for a requeue (nothing could be stored) is given
back to the broker only after ``requeue_delay``, so a full outbox does not turn into a
tight redelivery loop. One thread owns the connection, so heartbeats keep flowing
while the chain does slow work elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import zmq
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

from pylib.amqp import CONNECTION_ERRORS, close_quietly, describe
from pylib.backoff import Backoff
from pylib.envelope import Envelope, EnvelopeError
from pylib.relay import Sender, bind_pull, drain
from pylib.worker import RestartBudget, Worker

log = logging.getLogger(__name__)

RECEIVED = Counter("amqp_messages_received_total", "Messages consumed", ["queue"])
REJECTED = Counter(
    "amqp_messages_rejected_total", "Messages acked without processing", ["queue", "reason"]
)
RECONNECTS = Counter("amqp_reconnects_total", "Times a connection to the broker was lost", ["role"])

ACK_KIND = "amqp.ack"


class RejectedMessageError(ValueError):
    """Raised by a decoder for a message that can never be processed; ``reason`` labels the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


Decoder = Callable[[bytes, pika.BasicProperties], Envelope]
Setup = Callable[[BlockingChannel], str]


def ack_part(ack: dict[str, Any], parts: int = 1, *, requeue: bool = False) -> Envelope:
    """The message telling the ack's owner that one of ``parts`` parts of its work is done.

    ``requeue`` gives the work back instead (nothing was stored). Every key of ``ack``
    (``reply_to``, and whatever its owner put there) comes back unchanged.
    """
    return Envelope(ACK_KIND, {**ack, "parts": parts, "requeue": requeue})


@dataclass
class _Pending:
    done: int = 0


class AmqpListener(Worker):
    """Consumes ``queue`` (declared by ``setup``), forwards decoded envelopes to ``forward_to``."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        params: pika.ConnectionParameters,
        setup: Setup,
        decode: Decoder,
        forward_to: str,
        ack_inbox: str,
        prefetch: int = 8,
        backoff: Backoff | None = None,
        drain_timeout: float = 5.0,
        requeue_delay: float = 5.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.params = params
        self.setup = setup
        self.decode = decode
        self.forward_to = forward_to
        self.ack_inbox = ack_inbox
        self.prefetch = prefetch
        self.backoff = backoff or Backoff()
        self.drain_timeout = drain_timeout
        self.requeue_delay = requeue_delay
        self.queue = ""
        self.consuming = threading.Event()
        self._epoch = 0
        self._pending: dict[int, _Pending] = {}
        # Deliveries to give back to the broker, and when (monotonic seconds).
        self._requeues: dict[int, float] = {}
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._acks: zmq.Socket[bytes] | None = None
        self._sender: Sender | None = None

    def on_thread_open(self) -> None:
        self._acks = bind_pull(self.ack_inbox)
        self._sender = Sender(self.forward_to)

    def on_thread_stop(self) -> None:
        # Whatever was unacked on this connection comes again from the broker.
        self.consuming.clear()
        close_quietly(self._connection)
        self._connection = self._channel = None
        self._pending.clear()
        self._requeues.clear()

    def on_thread_close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._acks is not None:
            self._acks.close(linger=0)
            self._acks = None

    @property
    def in_flight(self) -> int:
        """Deliveries handed down the chain (or waiting to be requeued) and not yet settled."""
        return len(self._pending) + len(self._requeues)

    def work(self) -> None:
        while self.should_keep_running():
            try:
                self._connect()
                self.backoff.reset()
                while self.should_keep_running():
                    self._pump(0.05)
                self._finish()
                return
            except CONNECTION_ERRORS as exc:
                self.consuming.clear()
                RECONNECTS.labels("consumer").inc()
                delay = self.backoff.next()
                log.warning(
                    "%s: broker connection %s lost (%s: %s); %d unacked deliveries will come "
                    "again; retrying in %.1f s",
                    self.name,
                    describe(self.params),
                    type(exc).__name__,
                    exc,
                    len(self._pending),
                    delay,
                )
                close_quietly(self._connection)
                self._connection = self._channel = None
                self._pending.clear()
                self._requeues.clear()
                self._wait(delay)

    def _wait(self, delay: float) -> None:
        # Acks for deliveries of a lost connection are dropped while we wait.
        deadline = time.monotonic() + delay
        while self.should_keep_running() and time.monotonic() < deadline:
            self._drain_acks(timeout_ms=50)

    def _connect(self) -> None:
        connection = pika.BlockingConnection(self.params)
        self._connection = connection
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        self.queue = self.setup(channel)
        channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        self._channel = channel
        self._epoch += 1
        self._pending.clear()
        self._requeues.clear()
        self.consuming.set()
        log.info("%s: consuming %s on %s", self.name, self.queue, describe(self.params))

    def _pump(self, seconds: float) -> None:
        assert self._connection is not None
        self._connection.process_data_events(time_limit=seconds)
        self._drain_acks(timeout_ms=0)
        self._requeue_due(time.monotonic())

    def _requeue_due(self, now: float) -> None:
        if not self._requeues or self._channel is None:
            return
        for tag, due in list(self._requeues.items()):
            if due <= now:
                del self._requeues[tag]
                self._channel.basic_nack(tag, requeue=True)

    def _finish(self) -> None:
        """On stop: take no new deliveries, wait a while for the acks of those in flight."""
        if self._channel is not None and self._channel.is_open:
            for tag in list(self._channel.consumer_tags):
                self._channel.basic_cancel(tag)
        # Waiting out a requeue delay would only hold the message back from the next run.
        self._requeue_due(float("inf"))
        deadline = time.monotonic() + self.drain_timeout
        while self._pending and time.monotonic() < deadline:
            self._pump(0.05)
        if self._pending:
            log.warning(
                "%s: stopping with %d deliveries unacked; the broker will deliver them again",
                self.name,
                len(self._pending),
            )

    def _on_message(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        RECEIVED.labels(self.queue).inc()
        tag = method.delivery_tag
        try:
            envelope = self.decode(body, properties)
        except RejectedMessageError as exc:
            self._reject(channel, tag, exc.reason, str(exc))
            return
        except Exception as exc:  # a decoder bug must not kill the consumer
            log.exception("%s: decoder failed", self.name)
            self._reject(channel, tag, type(exc).__name__, str(exc))
            return
        assert self._sender is not None
        self._pending[tag] = _Pending()
        ack = {"epoch": self._epoch, "tag": tag, "reply_to": self.ack_inbox}
        self._sender.send(Envelope(envelope.kind, {**envelope.body, "ack": ack}, envelope.id))

    def _reject(self, channel: BlockingChannel, tag: int, reason: str, detail: str) -> None:
        REJECTED.labels(self.queue, reason).inc()
        log.error("%s: rejected message %d (%s): %s", self.name, tag, reason, detail)
        # Acked, not requeued: a message that cannot be decoded will never succeed.
        channel.basic_ack(tag)

    def _drain_acks(self, timeout_ms: int) -> None:
        acks = self._acks
        assert acks is not None
        if timeout_ms and not acks.poll(timeout_ms):
            return
        for data in drain(acks):
            try:
                body = Envelope.unpack(data).body
                tag, parts = int(body["tag"]), int(body.get("parts", 1))
            except (EnvelopeError, KeyError, TypeError, ValueError) as exc:
                REJECTED.labels(self.queue, "malformed_ack").inc()
                log.error("%s: dropped a malformed ack: %s", self.name, exc)
                continue
            self._on_ack(body, tag, parts)

    def _on_ack(self, body: dict[str, Any], tag: int, parts: int) -> None:
        if body.get("epoch") != self._epoch or self._channel is None:
            return  # from a connection that is gone: the broker redelivers that message
        pending = self._pending.get(tag)
        if pending is None:
            return
        if body.get("requeue"):
            # Not at once: the broker would hand it straight back while nothing can store it.
            del self._pending[tag]
            self._requeues[tag] = time.monotonic() + self.requeue_delay
            log.warning(
                "%s: delivery %d handed back; giving it to the broker again in %.1f s",
                self.name,
                tag,
                self.requeue_delay,
            )
            return
        pending.done += 1
        if pending.done >= parts:
            del self._pending[tag]
            self._channel.basic_ack(tag)
