"""A RabbitMQ publisher stage: durable outbox first, then persistent messages with confirms.

- Requests that arrive together are stored in the SQLite outbox in one transaction (group
  commit); only then are their works acked (the durable hand-off). A full outbox hands a
  message back (a ``requeue`` ack); one that cannot be written (a full disk) holds them and
  pauses intake, so nothing is acked that is not on disk.
- Rows are published oldest first, in groups whose confirms are awaited together, and
  leave the outbox once confirmed; their rows leave the disk with the next commit, or after
  ``REMOVAL_DELAY`` of quiet (one sync fewer per group: measured, docs/benchmarks.md).
- A nack keeps the row in front, retried after a back-off; a group stops at the first
  message not acked and the rest go one by one (at least once). A row refused for good
  (404 or 406 closing the channel) is tried once more on a fresh channel, then *parked*.
- Events go without ``mandatory``: one no queue is bound to is dropped by the broker, as
  the original daemon's were."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pika
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

from pylib.amqp.confirms import ConfirmedChannel, Outgoing
from pylib.amqp.outbox import Outbox, OutboxEntry, OutboxError, OutboxFullError
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
from pylib.chain.attachment import Attachment
from pylib.chain.envelope import Envelope
from pylib.chain.settle import (
    DONE_KIND,
    PUBLISH_KIND,
    Publication,
    Replies,
    Settlement,
)
from pylib.chain.stage import Stage, Timer
from pylib.retry import RetryPolicy
from pylib.runtime.health import Health
from pylib.runtime.worker import RestartBudget

log = logging.getLogger(__name__)

PUBLISHED = Counter("amqp_messages_published_total", "Messages confirmed by the broker", ["kind"])
PUBLISH_FAILURES = Counter(
    "amqp_publish_failures_total", "Publishes the broker refused or that failed", ["reason"]
)

FLUSH_BATCH = 100
# Messages sent before their confirms are awaited together (about 5 MB of snapshots).
CONFIRM_GROUP = 32
# How long confirmed rows may stay on disk when no new message comes to commit with.
REMOVAL_DELAY = 0.05
# How long one round of publishing from the outbox may take before intake gets a turn.
FLUSH_ROUND_SECONDS = 0.2
# How often an idle connection is serviced (heartbeats, a broker that went away).
SERVICE_INTERVAL = 1.0

RECONNECT = RetryPolicy(first=0.5, maximum=30.0, jitter=0.2)
NACK_RETRY = RetryPolicy(first=0.5, maximum=30.0)
STORE_RETRY = RetryPolicy(first=0.2, maximum=10.0)
# An outbox that keeps failing is logged at most this often (every failure is counted).
TROUBLE_LOG_INTERVAL = 60.0
# Channel closes that mean the broker will never take this message: 404 NOT_FOUND (no
# such exchange) and 406 PRECONDITION_FAILED (e.g. larger than the broker's limit).
REFUSED_FOR_GOOD = frozenset({404, 406})


Row = tuple[str, str, bytes, Mapping[str, str] | None, Attachment | None]


@dataclass(frozen=True)
class _Request:
    envelope: Envelope
    settlement: Settlement
    row: Row | None  # None: a done mark, nothing to store


class AmqpPublisher(Stage):
    """Takes publish requests (and done marks), stores them, publishes them, acks back.
    ``nack_retry`` paces retries of a message the broker refused; ``stop_timeout``
    bounds the last round of publishing at stop (what is left stays in the outbox)."""

    stop_weight = 1.5

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        params: Brokers,
        setup: Callable[[BlockingChannel], object],
        outbox_path: Path,
        inbox: str | None = None,
        ack_to: str | None = None,
        outbox_max: int = 10_000,
        retry: RetryPolicy = RECONNECT,
        nack_retry: RetryPolicy = NACK_RETRY,
        store_retry: RetryPolicy = STORE_RETRY,
        stop_timeout: float = 2.0,
        periodic: Callable[[], Publication] | None = None,
        periodic_interval: float = 5.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            name,
            stop_event,
            inbox=inbox,
            stop_timeout=stop_timeout,
            budget=budget,
            on_fatal=on_fatal,
        )
        self.params = params
        self.setup = setup
        self.outbox_path = outbox_path
        self.outbox_max = outbox_max
        self.ack_to = ack_to
        self.periodic = periodic
        self.periodic_interval = periodic_interval
        self.connected = threading.Event()
        self._reconnect = retry.backoff()
        self._link = LinkLog(log, name, describe(params), retry.maximum)
        self._nack = nack_retry.backoff()
        self._store = store_retry.backoff()
        self._outbox: Outbox | None = None
        self._replies: Replies | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: ConfirmedChannel | None = None
        # Requests the outbox could not store: kept here, intake paused, until it can.
        self._held: list[_Request] = []
        self._flush_at = 0.0
        self._connect_timer: Timer | None = None
        self._removal_timer: Timer | None = None
        # When the outbox last committed new messages (which take removals along).
        self._stored_at = 0.0
        # Exchanges the broker took a message for on the current channel.
        self._proven: set[str] = set()
        # What is wrong with the outbox now (None: nothing), for health; and log pacing.
        self._outbox_trouble: str | None = None
        self._trouble_failures = 0
        self._trouble_log_at = 0.0

    def on_thread_open(self) -> None:
        super().on_thread_open()
        self._replies = Replies(self.ack_to)

    def on_thread_close(self) -> None:
        super().on_thread_close()
        if self._replies is not None:
            self._replies.close()
            self._replies = None

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._outbox = Outbox(self.outbox_path, self.outbox_max)
        self._connect_timer = None
        self._removal_timer = None
        self._connect_later(0)
        self.call_later(SERVICE_INTERVAL, self._service)
        if self.periodic is not None:
            self.call_later(0, self._publish_periodic)

    def on_thread_stop(self) -> None:
        self._disconnect()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
        super().on_thread_stop()

    @property
    def outbox_depth(self) -> int | None:
        """Messages in the outbox now (None while it is not open); safe from any thread."""
        outbox = self._outbox
        return len(outbox) if outbox is not None else None

    @property
    def outbox_writable(self) -> bool:
        return self._outbox_trouble is None

    def troubles(self) -> list[str]:
        """The outbox cannot be written (a full disk, say), while that lasts."""
        trouble = self._outbox_trouble
        return [trouble] if trouble else []

    def health(self) -> Health:
        """Without the broker or a writable outbox no event goes out: problems."""
        health = super().health()
        connected = self.connected.is_set()
        if not connected:
            health.problems.append("publisher cannot reach the broker; events wait in the outbox")
        health.problems.extend(health.warnings)
        health.warnings = []
        health.detail["broker"] = {"publisher": connected}
        health.detail["outbox"] = {"depth": self.outbox_depth, "writable": self.outbox_writable}
        return health

    def finish(self, deadline: float) -> None:
        """At stop: store what is held if it can be, else hand it back; publish until ``deadline``."""
        self._store_held()
        if self._held:
            held, self._held = self._held, []
            for request in held:
                self._give_back(request, "the outbox cannot be written")
        if self._connection is None or self._outbox is None:
            return
        try:
            self._flush(deadline)
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

    def on_messages(self, envelopes: list[Envelope]) -> None:
        requests = [r for r in (self._parse(envelope) for envelope in envelopes) if r]
        if self._held:
            # Intake is paused, so only the stop's drain gets here: they queue behind the
            # held ones, and finish() stores or hands back all of them in order.
            self._held.extend(requests)
            return
        replies = self._take(requests)
        self._flush_soon()
        for reply in replies:
            reply()

    def _parse(self, envelope: Envelope) -> _Request | None:
        settlement = Settlement.of(envelope.body)
        if envelope.kind == DONE_KIND:
            if envelope.body.get("requeue"):
                # A part that could not be kept (say, a full disk): its work comes back.
                assert self._replies is not None
                self._replies.send(settlement, requeue=True)
                return None
            return _Request(envelope, settlement, None)
        body = envelope.body
        try:
            if envelope.kind != PUBLISH_KIND:
                raise ValueError(f"unexpected message kind {envelope.kind!r}")
            headers = {str(k): str(v) for k, v in dict(body.get("headers") or {}).items()}
            row: Row = (
                str(body["exchange"]),
                str(body["routing_key"]),
                bytes(body["body"]),
                {"message_id": envelope.id, **headers},
                Attachment.of(body.get("attachment")),
            )
            if row[4] is not None:
                row[4].check_within(len(row[2]))
        except (KeyError, TypeError, ValueError) as exc:
            # Nothing can ever be published from it: settled (acked) so its work is not stuck.
            PUBLISH_FAILURES.labels("malformed").inc()
            log.error("%s: dropped a malformed request %s: %s", self.name, envelope.id, exc)
            self._ack(settlement)
            return None
        return _Request(envelope, settlement, row)

    def _take(self, requests: list[_Request]) -> list[Callable[[], None]]:
        """Store the publish requests in one commit; return their replies, to send in
        order: an ack for each stored one (and each done mark), a hand-back for the rest."""
        outbox = self._outbox
        assert outbox is not None
        fits = [request for request in requests if request.row is not None][: outbox.room]
        stored_rows = [request.row for request in fits if request.row is not None]
        try:
            outbox.append_many(stored_rows)
        except OutboxFullError:  # pragma: no cover - room was checked just above
            fits = []
        except OutboxError as exc:
            self._hold(requests, exc)
            return []
        if stored_rows:
            self._stored_at = time.monotonic()
            self._outbox_writable()
        self._store.reset()
        stored = set(map(id, fits))
        replies: list[Callable[[], None]] = []
        for request in requests:  # replies in the order the requests came
            if request.row is None or id(request) in stored:
                replies.append(functools.partial(self._ack, request.settlement))
            else:
                PUBLISH_FAILURES.labels("outbox_full").inc()
                why = f"outbox {outbox.path} is full"
                replies.append(functools.partial(self._give_back, request, why))
        return replies

    def _hold(self, requests: list[_Request], exc: OutboxError) -> None:
        """Keep requests the outbox refused for a reason other than being full; retry later."""
        delay = self._store.next()
        self._held = requests
        self.pause_inbox()
        self.call_later(delay, self._store_held)
        self._outbox_failed(
            exc,
            f"could not store {len(requests)} message(s); holding them and taking nothing new",
        )

    def _outbox_failed(self, exc: OutboxError, what: str) -> None:
        """Count an outbox failure, show it in health, log it at most once a minute; a
        damaged file is moved aside at once instead (a fresh outbox takes its place)."""
        PUBLISH_FAILURES.labels("outbox_error").inc()
        if exc.damaged and self._outbox is not None:
            try:
                self._outbox.set_aside(exc)
            except OutboxError as again:
                exc = again
            else:
                return
        self._outbox_trouble = f"outbox cannot be written: {exc}"
        self._trouble_failures += 1
        now = time.monotonic()
        if now < self._trouble_log_at:
            return
        self._trouble_log_at = now + TROUBLE_LOG_INTERVAL
        log.error(
            "%s: %s (%s); %d failure(s) so far, retrying on its own; next line in %.0f s at most",
            self.name,
            what,
            exc,
            self._trouble_failures,
            TROUBLE_LOG_INTERVAL,
        )

    def _outbox_writable(self) -> None:
        if self._outbox_trouble is None:
            return
        log.info(
            "%s: the outbox can be written again after %d failure(s)",
            self.name,
            self._trouble_failures,
        )
        self._outbox_trouble = None
        self._trouble_failures = 0
        self._trouble_log_at = 0.0

    def _store_held(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        replies = self._take(held)
        if not self._held:
            self.pause_inbox(False)
            self._flush_soon()
        for reply in replies:
            reply()

    def _give_back(self, request: _Request, why: str) -> None:
        """A message that cannot be stored: a requeue ack to whoever can retry it, else loud loss."""
        if request.row is None:
            self._ack(request.settlement)  # a done mark needs no storing
            return
        assert self._replies is not None
        if self._replies.send(request.settlement, requeue=True):
            log.error("%s: %s; handing %s back to be retried", self.name, why, request.envelope.id)
            return
        PUBLISH_FAILURES.labels("dropped").inc()
        log.error(
            "%s: %s; message %s to %s dropped: no one to hand it back to",
            self.name,
            why,
            request.envelope.id,
            request.row[1],
        )

    def _ack(self, settlement: Settlement) -> None:
        assert self._replies is not None
        self._replies.send(settlement)

    def _flush_soon(self) -> None:
        if self._connection is not None and time.monotonic() >= self._flush_at:
            self._guarded(lambda: self._flush(time.monotonic() + FLUSH_ROUND_SECONDS))

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
        except OutboxError as exc:
            delay = self._store.next()
            self._flush_at = time.monotonic() + delay
            self.call_later(delay, self._flush_soon)
            self._outbox_failed(exc, "cannot publish from the outbox")

    def _service(self) -> None:
        self.call_later(SERVICE_INTERVAL, self._service)
        connection = self._connection
        if connection is not None:
            self._guarded(lambda: connection.process_data_events(0))
            self._flush_soon()

    def _connect(self) -> None:
        self._connect_timer = None
        try:
            self._connection = connect(self.params)
            self._open_channel()
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return
        self._reconnect.reset()
        self._flush_at = 0.0
        self.connected.set()
        self._link.up(f"connected to {connected_to(self._connection, self.params)}")
        self._flush_soon()

    def _lost(self, exc: BaseException) -> None:
        was_connected = self.connected.is_set()
        self._disconnect()
        delay = self._reconnect.next()
        self._connect_later(delay)
        if was_connected:
            RECONNECTS.labels("publisher").inc()
        self._link.failed(explain(exc), delay, "events wait in the outbox")

    def _connect_later(self, delay: float) -> None:
        # One reconnect at a time, however many paths noticed the loss.
        if self._connect_timer is None or self._connect_timer.cancelled:
            self._connect_timer = self.call_later(delay, self._connect)

    def _disconnect(self) -> None:
        self.connected.clear()
        close_quietly(self._connection)
        self._connection = self._channel = None

    def _flush(self, deadline: float) -> None:
        """Publish from the outbox, oldest first, until it is empty, a nack, or ``deadline``."""
        outbox = self._outbox
        assert outbox is not None
        while True:
            entries = self._next_entries(outbox)
            if not entries:
                return
            start = 0
            while start < len(entries):
                group = self._group(entries, start)
                start += len(group)
                if not self._publish_group(group):
                    return
                if time.monotonic() >= deadline:
                    if len(outbox):
                        self.call_later(0, self._flush_soon)  # intake gets a turn first
                    return

    def _group(self, entries: list[OutboxEntry], start: int) -> list[OutboxEntry]:
        """The entries from ``start`` that go out together: a run to exchanges the broker took
        a message for on this channel, or one alone. A refused message closes the channel, and
        then nothing says which of the group it was; alone, one to an exchange that may be
        missing is refused without taking others with it."""
        group: list[OutboxEntry] = []
        for entry in entries[start : start + CONFIRM_GROUP]:
            if entry.exchange not in self._proven:
                break
            group.append(entry)
        return group or [entries[start]]

    def _publish_group(self, entries: list[OutboxEntry]) -> bool:
        """Publish ``entries``, their confirms awaited together; False if publishing must pause."""
        assert self._channel is not None
        if len(entries) == 1:
            return self._publish_alone(entries[0])
        confirmed = 0
        try:
            outcomes = self._channel.publish([self._outgoing(entry) for entry in entries])
            confirmed = next((n for n, acked in enumerate(outcomes) if not acked), len(entries))
            closed = None
        except pika.exceptions.ChannelClosedByBroker as exc:
            confirmed = self._channel.confirmed_before_close(len(entries))
            closed = exc
        finally:
            self._confirmed(entries[:confirmed])
        if confirmed == len(entries):
            self._nack.reset()
            return True
        rest = entries[confirmed:]
        if closed is not None:
            if closed.reply_code not in REFUSED_FOR_GOOD:
                raise closed  # a reason that may pass: reconnect and try again
            self._open_channel()  # the exchanges declared again: the next try is the second
        for number, entry in enumerate(rest):
            if not self._publish_alone(entry, tried=closed is not None and number == 0):
                return False
        return True

    def _confirmed(self, entries: list[OutboxEntry]) -> None:
        if not entries:
            return
        PUBLISHED.labels("event").inc(len(entries))
        assert self._outbox is not None
        self._outbox.forget([entry.id for entry in entries])
        if self._removal_timer is None:
            self._removal_timer = self.call_later(REMOVAL_DELAY, self._commit_removals)

    def _commit_removals(self) -> None:
        self._removal_timer = None
        outbox = self._outbox
        if outbox is None or not outbox.removals_pending:
            return
        quiet = time.monotonic() - self._stored_at
        if quiet < REMOVAL_DELAY:
            self._removal_timer = self.call_later(REMOVAL_DELAY - quiet, self._commit_removals)
            return
        try:
            outbox.commit_removals()
        except OutboxError as exc:
            # Never published again meanwhile: they are out of the outbox already.
            self._removal_timer = self.call_later(self._store.next(), self._commit_removals)
            self._outbox_failed(exc, "cannot remove published messages from the outbox")
            return
        self._outbox_writable()

    def _next_entries(self, outbox: Outbox) -> list[OutboxEntry]:
        """The next rows to publish; one whose attached file is gone or changed is parked."""
        while True:
            entries = outbox.peek(FLUSH_BATCH)
            broken = [entry for entry in entries if entry.problem is not None]
            if not broken:
                return entries
            for entry in broken:
                self._park(entry, str(entry.problem))

    def _publish_alone(self, entry: OutboxEntry, *, tried: bool = False) -> bool:
        """One row alone; False on a nack. ``tried``: its first try closed the channel (404/406)."""
        for attempt in (2,) if tried else (1, 2):
            try:
                self._publish(
                    Publication(entry.exchange, entry.routing_key, entry.body, entry.headers),
                    persistent=True,
                )
            except pika.exceptions.NackError as exc:
                # Kept in the outbox, in front, and tried again after a back-off.
                PUBLISH_FAILURES.labels("nack").inc()
                delay = self._nack.next()
                self._flush_at = time.monotonic() + delay
                self.call_later(delay, self._flush_soon)
                log.warning(
                    "%s: broker refused message %d (%s); %d messages wait; trying again in %.1f s",
                    self.name,
                    entry.id,
                    type(exc).__name__,
                    len(self._outbox) if self._outbox is not None else 0,
                    delay,
                )
                return False
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code not in REFUSED_FOR_GOOD:
                    raise  # a reason that may pass: reconnect and try again
                # The channel is gone, the connection is not. The setup declares our
                # exchanges again, so a row for one an operator deleted gets through now.
                self._open_channel()
                if attempt == 1:
                    continue
                self._park(entry, exc)
                return True
            self._nack.reset()
            self._proven.add(entry.exchange)
            self._confirmed([entry])
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_channel(self) -> None:
        assert self._connection is not None
        channel = self._connection.channel()
        self.setup(channel)
        self._channel = ConfirmedChannel(channel)
        self._proven.clear()

    def _park(self, entry: OutboxEntry, why: pika.exceptions.ChannelClosedByBroker | str) -> None:
        """Set aside a row the broker will never take or that cannot go whole: the rest flow."""
        assert self._outbox is not None
        if isinstance(why, str):
            reason, what = why, "cannot be sent"
        else:
            reason = f"{why.reply_code} {why.reply_text}"
            what = f"is refused for good by the broker (exchange {entry.exchange!r})"
        self._outbox.park(entry.id, reason)
        self._outbox_writable()
        PUBLISH_FAILURES.labels("parked").inc()
        log.error(
            "%s: message %d (%s) %s: %s; parked it in the parked table of %s; the rest go on",
            self.name,
            entry.id,
            entry.headers.get("message_id", "?"),
            what,
            reason,
            self._outbox.path,
        )

    def _publish_periodic(self) -> None:
        periodic = self.periodic
        assert periodic is not None
        self.call_later(self.periodic_interval, self._publish_periodic)
        if self._connection is None or self._channel is None:
            return

        def publish() -> None:
            try:
                self._publish(periodic(), persistent=False)
            except pika.exceptions.NackError as exc:
                PUBLISH_FAILURES.labels("nack").inc()
                log.warning("%s: broker refused a periodic message: %s", self.name, exc)
                return
            PUBLISHED.labels("periodic").inc()

        self._guarded(publish)

    def _publish(self, publication: Publication, *, persistent: bool) -> None:
        """One message, its confirm awaited; ``NackError`` when the broker refuses it."""
        assert self._channel is not None
        [acked] = self._channel.publish([_outgoing(publication, persistent=persistent)])
        if not acked:
            raise pika.exceptions.NackError([])

    @staticmethod
    def _outgoing(entry: OutboxEntry) -> Outgoing:
        publication = Publication(entry.exchange, entry.routing_key, entry.body, entry.headers)
        return _outgoing(publication, persistent=True)


def _outgoing(publication: Publication, *, persistent: bool) -> Outgoing:
    headers = publication.headers
    properties = pika.BasicProperties(
        content_type=headers.get("content_type", "application/msgpack"),
        message_id=headers.get("message_id"),
        timestamp=int(time.time()),
        delivery_mode=pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient,
    )
    return publication.exchange, publication.routing_key, publication.body, properties
