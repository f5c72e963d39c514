"""A RabbitMQ consumer thread: manual acks after durable hand-off, reconnect with back-off.

Each delivery goes down the chain with an ack token (:mod:`pylib.chain.settle`) and is
acked once all its parts are done; one handed back goes down the chain again after a
growing pause (``requeue``), not in a tight loop, and without returning to the broker (a
quorum queue would count that against its delivery limit), unless another of its parts
is still under way or the listener stops: then the broker has it again. One thread blocks in pika's loop (heartbeats
flow); acks wake it through ``add_callback_threadsafe``. A consumer the broker cancels is
declared again on the same channel after a back-off, so held deliveries' acks still count."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import zmq
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

from pylib.amqp.params import (
    CONNECTION_ERRORS,
    RECONNECTS,
    Brokers,
    LinkLog,
    close_quietly,
    connect,
    connected_to,
    describe,
    explain,
)
from pylib.chain.envelope import Envelope
from pylib.chain.settle import (
    AckInbox,
    PartCounter,
    Settlement,
    ack_token,
)
from pylib.chain.sockets import Sender, inproc
from pylib.chain.stage import Stage
from pylib.retry import RetryPolicy
from pylib.runtime.health import Health
from pylib.runtime.worker import RestartBudget, Worker

log = logging.getLogger(__name__)

RECEIVED = Counter("amqp_messages_received_total", "Messages consumed", ["queue"])
REJECTED = Counter(
    "amqp_messages_rejected_total", "Messages acked without processing", ["queue", "reason"]
)
CONSUMER_CANCELS = Counter(
    "amqp_consumer_cancels_total",
    "Times the broker cancelled our consumer (queue deleted, quorum leader moved)",
    ["queue"],
)

RECONNECT = RetryPolicy(first=0.5, maximum=30.0, jitter=0.2)
REQUEUE = RetryPolicy(first=2.0, maximum=30.0)
# How long pika's loop blocks when nothing happens; stop and acks wake it sooner.
IDLE_SECONDS = 1.0


class RejectedMessageError(ValueError):
    """Raised by a decoder for a message that can never be processed; ``reason`` labels the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


Decoder = Callable[[bytes, pika.BasicProperties], Envelope]
Setup = Callable[[BlockingChannel], str]
# Looks at the broker now and then on the consumer's channel (a dead-letter queue's depth,
# say); returns what a person should hear of, as warnings.
Watch = Callable[[BlockingChannel], list[str]]
WATCH_INTERVAL = 30.0


class _AckInbox(Stage):
    """Reads the ack inbox for acks sent as messages (pika's loop cannot poll ZeroMQ)."""

    def __init__(self, listener: AmqpListener) -> None:
        super().__init__(
            f"{listener.name}-acks",
            listener.stop_event,
            inbox=listener.ack_inbox,
            on_fatal=listener.on_fatal,  # without it no delivery is ever acked again
        )
        self.acks = listener.acks

    def on_message(self, envelope: Envelope) -> None:
        self.acks.on_ack(envelope.body)


class AmqpListener(Worker):
    """Consumes ``queue`` (declared by ``setup``), forwards decoded envelopes to ``forward_to``."""

    stop_weight = 3.0

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        params: Brokers,
        setup: Setup,
        decode: Decoder,
        forward_to: str,
        ack_inbox: str | None = None,
        prefetch: int = 8,
        retry: RetryPolicy = RECONNECT,
        stop_timeout: float = 5.0,
        requeue: RetryPolicy = REQUEUE,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
        watch: Watch | None = None,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.params = params
        self.watch = watch
        self.watch_interval = watch_interval
        self._watch_at = 0.0
        self._watched: list[str] = []
        self.setup = setup
        self.decode = decode
        self.forward_to = forward_to
        self.ack_inbox = ack_inbox or inproc(f"{name}-acks")
        self.acks = AckInbox(self.ack_inbox, self.ack_from_chain)
        self.prefetch = prefetch
        self.backoff = retry.backoff()
        self._link = LinkLog(log, name, describe(params), retry.maximum)
        self.stop_timeout = stop_timeout
        self._requeue_backoff = requeue.backoff()
        self.queue = ""
        self.consuming = threading.Event()
        self._epoch = 0
        self._pending: PartCounter[int] = PartCounter()
        # Deliveries handed back, waiting out their pause: True where the chain holds no
        # other part of it, so it may be given to the chain again rather than to the broker.
        self._requeues: dict[int, bool] = {}
        # What went down the chain per delivery, for such a second go.
        self._sent: dict[int, Envelope] = {}
        # Acks from the chain waiting for pika's thread (see ack_from_chain).
        self._acks_lock = threading.Lock()
        self._acks_waiting: list[tuple[int, int, int, bool]] = []
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._sender: Sender | None = None
        self._acks: _AckInbox | None = None
        self._cancelled_since: float | None = None  # monotonic, while the broker cancelled us
        self._resume_at = 0.0
        self._resume_backoff = retry.backoff()
        self._setup_refused: str | None = None  # the broker's refusal, until a set-up succeeds

    def on_thread_open(self) -> None:
        self._sender = Sender(self.forward_to)
        # Acks from this process come by a direct call; the inbox is for those sent as messages.
        self.acks.open()
        self._acks = _AckInbox(self)
        self._acks.start()

    def on_thread_stop(self) -> None:
        # Whatever was unacked on this connection comes again from the broker.
        self.consuming.clear()
        self._drop_connection()

    def on_thread_close(self) -> None:
        self.acks.close()
        if self._acks is not None:
            self._acks.stop_and_join(5.0)
            self._acks = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def stop(self) -> None:
        """Ask the thread to end; wakes pika's loop at once."""
        super().stop()
        self._call_threadsafe(lambda: None)

    def troubles(self) -> list[str]:
        """The broker refusing our queue, or a consumer it cancelled and not yet restored."""
        found = []
        refused = self._setup_refused
        if refused is not None:
            found.append(f"{self.name}: the broker refused the queue set-up: {refused}")
        since = self._cancelled_since
        if since is not None:
            found.append(
                f"{self.name}: the broker cancelled the consumer of {self.queue} "
                f"{time.monotonic() - since:.0f} s ago; declaring the queue again"
            )
        return found

    def health(self) -> Health:
        """Without a consumer no trigger arrives: a problem, said once."""
        health = super().health()
        consuming = self.consuming.is_set()
        if not consuming and not health.warnings:
            health.problems.append("listener cannot reach the broker; no triggers arrive")
        health.problems.extend(health.warnings)
        # What the watch saw is no fault of this connection, and no restart mends it.
        health.warnings = list(self._watched)
        health.detail["broker"] = {"listener": consuming}
        acks = self._acks
        if acks is not None and not acks.healthy:
            health.problems.append(f"thread {acks.name} is dead")
        return health

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
                    if self._cancelled_since is None:
                        self._look()
                        self._pump(IDLE_SECONDS)
                    elif time.monotonic() >= self._resume_at:
                        self._resume()
                    else:
                        self._pump(min(IDLE_SECONDS, self._resume_at - time.monotonic()))
                self._finish()
                return
            except CONNECTION_ERRORS as exc:
                self.consuming.clear()
                RECONNECTS.labels("consumer").inc()
                delay = self.backoff.next()
                if not isinstance(exc, pika.exceptions.ChannelClosedByBroker):
                    self._setup_refused = None  # unknown again until the next set-up
                if self._setup_refused is not None:
                    log.error(
                        "%s: the broker refused the queue set-up: %s; retrying in %.1f s",
                        self.name,
                        self._setup_refused,
                        delay,
                    )
                else:
                    unacked = len(self._pending)
                    self._link.failed(
                        explain(exc),
                        delay,
                        f"{unacked} unacked deliveries will come again" if unacked else "",
                    )
                self._drop_connection()
                self.wait_for_stop(delay)

    def _look(self) -> None:
        if self.watch is None or self._channel is None or time.monotonic() < self._watch_at:
            return
        self._watch_at = time.monotonic() + self.watch_interval
        self._watched = self.watch(self._channel)

    def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        with self._acks_lock:
            # A wake sent to the old connection may never run: later acks must send anew.
            self._acks_waiting.clear()
        close_quietly(connection)
        self._cancelled_since = None  # the next connection declares and consumes afresh
        self._pending.clear()
        self._requeues.clear()
        self._sent.clear()

    def _connect(self) -> None:
        connection = connect(self.params)
        self._connection = connection
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.add_on_cancel_callback(self._on_cancelled)
        self._declare_and_consume(channel)
        self._channel = channel
        self._epoch += 1
        self._pending.clear()
        self._requeues.clear()
        self._sent.clear()
        self._watch_at = 0.0  # look again on every new connection
        self.consuming.set()
        self._link.up(
            f"consuming {self.queue} on {connected_to(connection, self.params)} (prefetch {self.prefetch})"
        )

    def _declare_and_consume(self, channel: BlockingChannel) -> None:
        try:
            self.queue = self.setup(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            # PRECONDITION_FAILED or ACCESS_REFUSED: no reconnect mends that, so say so.
            self._setup_refused = f"{exc.reply_code} {exc.reply_text}"
            raise
        self._setup_refused = None
        channel.basic_consume(self.queue, self._on_message, auto_ack=False)

    def _on_cancelled(self, method_frame: pika.frame.Method[Any]) -> None:
        """The broker ended our consumer (on the connection's thread): consume again soon."""
        CONSUMER_CANCELS.labels(self.queue).inc()
        delay = self._resume_backoff.next()
        if self._cancelled_since is None:
            self._cancelled_since = time.monotonic()
        self._resume_at = time.monotonic() + delay
        log.warning(
            "%s: the broker cancelled the consumer of %s (queue deleted, or its leader "
            "moved); declaring it again in %.1f s",
            self.name,
            self.queue,
            delay,
        )

    def _resume(self) -> None:
        assert self._channel is not None
        self._declare_and_consume(self._channel)
        self._cancelled_since = None
        log.info("%s: consuming %s again", self.name, self.queue)

    def _pump(self, seconds: float) -> None:
        assert self._connection is not None
        self._connection.process_data_events(time_limit=seconds)

    def _finish(self) -> None:
        """On stop: take no new deliveries, wait a while for the acks of those in flight."""
        if self._channel is not None and self._channel.is_open:
            for tag in list(self._channel.consumer_tags):
                self._channel.basic_cancel(tag)
        # Waiting out a requeue delay would only hold the message back from the next run.
        for tag in list(self._requeues):
            self._give_back(tag)
        deadline = time.monotonic() + self.stop_timeout
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
        self._resume_backoff.reset()
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
        settlement = Settlement(ack_token(self.ack_inbox, epoch=self._epoch, tag=tag))
        body_out = {**envelope.body, **settlement.fields()}
        self._pending.add(tag)
        sent = Envelope(envelope.kind, body_out, envelope.id)
        self._sent[tag] = sent
        try:
            self._sender.send(sent)
        except zmq.ZMQError:
            raise  # the chain is going away: the broker delivers it again
        except Exception as exc:  # a value the chain cannot carry (e.g. an integer past 64 bits)
            self._pending.discard(tag)
            self._sent.pop(tag, None)
            self._reject(channel, tag, "unsendable", f"{type(exc).__name__}: {exc}")

    def _reject(self, channel: BlockingChannel, tag: int, reason: str, detail: str) -> None:
        REJECTED.labels(self.queue, reason).inc()
        log.error("%s: rejected message %d (%s): %s", self.name, tag, reason, detail)
        # Acked, not requeued: a message that cannot be decoded will never succeed.
        channel.basic_ack(tag)

    def ack_from_chain(self, body: dict[str, Any]) -> None:
        """An ack from the chain (any thread): settled on the connection's thread."""
        try:
            epoch, tag, parts = int(body["epoch"]), int(body["tag"]), int(body.get("parts", 1))
        except (KeyError, TypeError, ValueError) as exc:
            REJECTED.labels(self.queue, "malformed_ack").inc()
            log.error("%s: dropped a malformed ack: %s", self.name, exc)
            return
        requeue = bool(body.get("requeue"))
        # Acks that come together wake pika's loop once (each wake is a pipe write and a turn).
        with self._acks_lock:
            self._acks_waiting.append((epoch, tag, parts, requeue))
            if len(self._acks_waiting) > 1:
                return  # a wake is on its way and takes this one too
        if not self._call_threadsafe(self._take_acks):
            with self._acks_lock:
                self._acks_waiting.clear()  # no connection: its deliveries come again

    def _take_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks_waiting = self._acks_waiting, []
        finished = [tag for tag in itertools.starmap(self._on_ack, acks) if tag is not None]
        if not finished:
            return
        # In one frame (``multiple``) those older than every delivery still under way (all
        # older are settled, unseen ones newer), the others one by one.
        assert self._channel is not None
        oldest = min(itertools.chain(self._pending, self._requeues), default=None)
        older = [tag for tag in finished if oldest is None or tag < oldest]
        if older:
            self._channel.basic_ack(max(older), multiple=True)
        for tag in finished:
            if oldest is not None and tag > oldest:
                self._channel.basic_ack(tag)

    def _call_threadsafe(self, callback: Callable[[], None]) -> bool:
        connection = self._connection
        if connection is None:
            return False  # no connection: its deliveries come again anyway
        try:
            connection.add_callback_threadsafe(callback)
        except (pika.exceptions.ConnectionWrongStateError, *CONNECTION_ERRORS):
            return False  # closing: the broker redelivers what was not acked
        return True

    def _on_ack(self, epoch: int, tag: int, parts: int, requeue: bool) -> int | None:
        """One part done (or handed back); the delivery's tag once it is all done."""
        if epoch != self._epoch or self._channel is None or tag not in self._pending:
            return None  # from a connection that is gone: the broker redelivers that message
        if requeue:
            # Not at once: the broker would hand it straight back while nothing can store it.
            # Then to the chain again, unless another part of it is still under way: a
            # quorum queue counts each return to the broker against the delivery limit.
            alone = self._pending.parts_done(tag) + 1 >= parts
            self._pending.discard(tag)
            self._requeues[tag] = alone
            assert self._connection is not None
            delay = self._requeue_backoff.next()
            self._connection.call_later(delay, functools.partial(self._requeue, epoch, tag))
            log.warning(
                "%s: delivery %d handed back; trying it again in %.1f s",
                self.name,
                tag,
                delay,
            )
            return None
        if self._pending.done(tag, parts):
            self._requeue_backoff.reset()
            self._sent.pop(tag, None)
            return tag
        return None

    def _requeue(self, epoch: int, tag: int) -> None:
        """After its pause: the delivery to the chain again, or back to the broker."""
        if epoch != self._epoch or tag not in self._requeues or self._channel is None:
            return
        alone = self._requeues.pop(tag)
        sent = self._sent.get(tag)
        if not alone or sent is None or self._sender is None:
            self._give_back(tag, pending=False)
            return
        self._pending.add(tag)
        self._sender.send(sent)
        log.info("%s: delivery %d given to the chain again", self.name, tag)

    def _give_back(self, tag: int, *, pending: bool = True) -> None:
        """To the broker, which delivers it again (here or to another consumer)."""
        if pending:
            self._requeues.pop(tag, None)
        self._sent.pop(tag, None)
        assert self._channel is not None
        self._channel.basic_nack(tag, requeue=True)
