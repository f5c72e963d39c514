"""Detection by ``detect-worker`` processes elsewhere (``DETECTION_REMOTE``): the daemon's
side. The detection stage calls :meth:`RemoteDetector.decide` as it calls any backend; a
link thread of its own sends the request and takes the reply. No answer within
``DETECTION_REMOTE_TIMEOUT`` is a failed detection like any other: the frame goes on
without detections, so a worker away never holds up an event."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

from pylib.amqp.params import (
    CONNECTION_ERRORS,
    Brokers,
    LinkLog,
    close_quietly,
    connect,
    connected_to,
    describe,
    explain,
)
from pylib.retry import RetryPolicy
from pylib.runtime.health import Health
from pylib.runtime.worker import Worker
from snapshot_processor.detection.base import Detection, DetectionError
from snapshot_processor.detection.cascade import Decision
from snapshot_processor.detection.work import REPLY_TO, Reply, ReplyError

log = logging.getLogger(__name__)

REMOTE_REQUESTS = Counter(
    "detection_remote_requests_total",
    "Detection requests sent to workers, by what came of them",
    ["outcome"],
)

# How long the link's loop blocks when nothing happens; requests and stop wake it sooner.
IDLE_SECONDS = 1.0
# How often the work queue's consumers (the workers) are counted, for health.
WORKERS_CHECK_SECONDS = 10.0


@dataclass
class _Waiting:
    done: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None
    failure: str | None = None


class WorkLink(Worker):
    """The daemon's connection for detection work: requests out, replies in."""

    def __init__(
        self,
        stop_event: threading.Event,
        *,
        params: Brokers,
        queue: str,
        timeout: float,
        retry: RetryPolicy,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__("detection-link", stop_event, on_fatal=on_fatal)
        self.params = params
        self.queue = queue
        self.timeout = timeout
        self.backoff = retry.backoff()
        self._link = LinkLog(log, self.name, describe(params), retry.maximum)
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._waiting: dict[str, _Waiting] = {}
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._workers: int | None = None  # consumers of the work queue, last counted
        self._queue_gone = False
        self._check_at = 0.0

    def ask(self, image: bytes) -> tuple[str, _Waiting]:
        """Send ``image`` for detection (any thread); wait on the returned ``done``."""
        connection = self._connection
        if connection is None or not self.connected.is_set():
            raise DetectionError("unreachable", "not connected to the broker")
        ident = uuid.uuid4().hex
        waiting = _Waiting()
        with self._lock:
            self._waiting[ident] = waiting
            self._outgoing.append((ident, image))
        try:
            connection.add_callback_threadsafe(self._send)
        except (pika.exceptions.ConnectionWrongStateError, *CONNECTION_ERRORS):
            self.forget(ident)
            raise DetectionError("unreachable", "the broker connection is closing") from None
        return ident, waiting

    def forget(self, ident: str) -> None:
        """No longer waited for: a reply that still comes is dropped as late."""
        with self._lock:
            self._waiting.pop(ident, None)

    def stop(self) -> None:
        super().stop()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)
            except (pika.exceptions.ConnectionWrongStateError, *CONNECTION_ERRORS):
                pass  # closing anyway

    def health(self) -> Health:
        """Detection away is no fault of the daemon's: warnings, not problems."""
        health = super().health()
        if not self.connected.is_set():
            health.warnings.append(
                "detection: not connected to the broker; frames go out without detections"
            )
        elif self._workers == 0:
            health.warnings.append(
                f"detection: no detect-worker consumes {self.queue}; frames go out without "
                "detections"
            )
        health.detail["detection_workers"] = self._workers
        return health

    def work(self) -> None:
        while self.should_keep_running():
            try:
                self._connect()
                self.backoff.reset()
                while self.should_keep_running():
                    if self._queue_gone:
                        self._declare_queue()
                    self._count_workers()
                    assert self._connection is not None
                    self._connection.process_data_events(time_limit=IDLE_SECONDS)
                return
            except CONNECTION_ERRORS as exc:
                delay = self.backoff.next()
                self._link.failed(explain(exc), delay, "frames go out without detections")
                self._drop_connection("the broker connection was lost")
                self.wait_for_stop(delay)

    def on_thread_stop(self) -> None:
        self._drop_connection("the daemon is stopping")

    def _connect(self) -> None:
        connection = connect(self.params)
        self._connection = connection
        channel = connection.channel()
        self._channel = channel
        # Declared here too, so a request sent before any worker started waits for one.
        self._declare_queue()
        channel.add_on_return_callback(self._on_returned)
        # Direct reply-to: consumed without acks, before the first request on this channel.
        channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        self._check_at = 0.0
        self.connected.set()
        self._link.up(f"detection work to {self.queue} on {connected_to(connection, self.params)}")

    def _declare_queue(self) -> None:
        assert self._channel is not None
        self._channel.queue_declare(self.queue, durable=False)
        self._queue_gone = False

    def _on_returned(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Return,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        """A request with no queue to go to: the node that held it left (it is not durable)."""
        self._queue_gone = True
        with self._lock:
            waiting = self._waiting.pop(str(properties.correlation_id), None)
        REMOTE_REQUESTS.labels("unroutable").inc()
        if waiting is not None:
            waiting.failure = (
                f"the work queue {self.queue} is gone (its node left); declaring it again"
            )
            waiting.done.set()

    def _drop_connection(self, why: str) -> None:
        self.connected.clear()
        connection, self._connection, self._channel = self._connection, None, None
        close_quietly(connection)
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            self._outgoing.clear()
        for pending in waiting.values():
            pending.failure = why
            pending.done.set()

    def _count_workers(self) -> None:
        if self._channel is None or time.monotonic() < self._check_at:
            return
        self._check_at = time.monotonic() + WORKERS_CHECK_SECONDS
        # Not passive: a queue that left with its node is made again, not a channel error.
        declared = self._channel.queue_declare(self.queue, durable=False)
        self._workers = int(declared.method.consumer_count)

    def _send(self) -> None:
        """On the link's thread: publish what waits."""
        channel = self._channel
        while channel is not None:
            with self._lock:
                if not self._outgoing:
                    return
                ident, image = self._outgoing.popleft()
                if ident not in self._waiting:
                    continue  # given up on before it went
            properties = pika.BasicProperties(
                reply_to=REPLY_TO,
                correlation_id=ident,
                content_type="image/jpeg",
                # Unseen by a worker in time, it is worth nothing: the broker drops it.
                expiration=str(max(1, int(self.timeout * 1000))),
            )
            channel.basic_publish("", self.queue, image, properties, mandatory=True)

    def _on_reply(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        with self._lock:
            waiting = self._waiting.pop(str(properties.correlation_id), None)
        if waiting is None:
            REMOTE_REQUESTS.labels("late").inc()
            log.debug("%s: a reply came after its wait ended; dropped", self.name)
            return
        try:
            waiting.reply = Reply.parse(body)
        except ReplyError as exc:
            REMOTE_REQUESTS.labels("malformed").inc()
            waiting.failure = f"a worker's reply could not be read: {exc}"
        waiting.done.set()


class RemoteDetector:
    """The backend ``remote``: each image to a worker over the link, its decision back."""

    name = "remote"

    def __init__(self, link: WorkLink) -> None:
        self.link = link

    def decide(self, image: bytes) -> Decision:
        """The worker's decision; :class:`DetectionError` when none comes in time."""
        ident, waiting = self.link.ask(image)
        if not waiting.done.wait(self.link.timeout):
            self.link.forget(ident)
            REMOTE_REQUESTS.labels("timeout").inc()
            raise DetectionError(
                "unreachable", f"no detection worker answered within {self.link.timeout:g} s"
            )
        if waiting.failure is not None:
            REMOTE_REQUESTS.labels("failed").inc()
            raise DetectionError("unreachable", waiting.failure)
        reply = waiting.reply
        assert reply is not None
        if reply.error is not None:
            REMOTE_REQUESTS.labels("error").inc()
            raise reply.error
        assert reply.decision is not None
        REMOTE_REQUESTS.labels("answered").inc()
        return reply.decision

    def detect(self, image: bytes) -> list[Detection]:
        return list(self.decide(image).detections)

    def close(self) -> None:
        """The link is the daemon's to stop."""

    def health(self) -> Health:
        return self.link.health()
