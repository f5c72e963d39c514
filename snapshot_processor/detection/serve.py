"""``detect-worker``: takes detection work from the queue, answers each request with the
configured backend's decision (or its error), and acks the request once the broker has
confirmed the answer. A worker that dies mid-request leaves it unacked: another worker
takes it while the daemon still waits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter, Histogram

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
from pylib.observe.redact import redact
from pylib.retry import RetryPolicy
from pylib.runtime.health import Health
from pylib.runtime.worker import Worker
from snapshot_processor.detection.base import DetectionError, Detector
from snapshot_processor.detection.cascade import decide
from snapshot_processor.detection.work import REPLY_CONTENT_TYPE, encode_decision, encode_error

log = logging.getLogger(__name__)

WORK_DONE = Counter(
    "detection_work_total", "Detection requests a worker took, by outcome", ["outcome"]
)
WORK_SECONDS = Histogram("detection_work_seconds", "Time a worker spent on one request")

IDLE_SECONDS = 1.0
CANCEL_PAUSE = 0.5


class DetectionService(Worker):
    """Consumes ``queue`` one request at a time (a worker's backend is its bottleneck; more
    in flight would only hold them from an idle worker)."""

    def __init__(
        self,
        stop_event: threading.Event,
        *,
        params: Brokers,
        queue: str,
        detector: Detector,
        retry: RetryPolicy,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__("detect-worker", stop_event, on_fatal=on_fatal)
        self.params = params
        self.queue = queue
        self.detector = detector
        self.backoff = retry.backoff()
        self._link = LinkLog(log, self.name, describe(params), retry.maximum)
        self.consuming = threading.Event()
        self._connection: pika.BlockingConnection | None = None
        self._cancelled = False

    def stop(self) -> None:
        super().stop()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)
            except (pika.exceptions.ConnectionWrongStateError, *CONNECTION_ERRORS):
                pass  # closing anyway

    def health(self) -> Health:
        health = Health.combine([super().health(), self.detector.health()])
        if not self.consuming.is_set():
            health.problems.append(f"not consuming {self.queue}: the broker cannot be reached")
        return health

    def work(self) -> None:
        while self.should_keep_running():
            try:
                channel = self._connect()
                self.backoff.reset()
                while self.should_keep_running():
                    if self._cancelled:
                        self._consume_again(channel)
                    assert self._connection is not None
                    self._connection.process_data_events(time_limit=IDLE_SECONDS)
                # Unacked requests (none: each is acked before the next comes) return.
                for tag in list(channel.consumer_tags):
                    channel.basic_cancel(tag)
                return
            except CONNECTION_ERRORS as exc:
                delay = self.backoff.next()
                self._link.failed(explain(exc), delay)
                self._drop_connection()
                self.wait_for_stop(delay)

    def on_thread_stop(self) -> None:
        self._drop_connection()

    def _connect(self) -> BlockingChannel:
        connection = connect(self.params)
        self._connection = connection
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.queue_declare(self.queue, durable=False)
        channel.confirm_delivery()
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.basic_consume(self.queue, self._on_request, auto_ack=False)
        self._cancelled = False
        self.consuming.set()
        self._link.up(
            f"taking detection work from {self.queue} on {connected_to(connection, self.params)} "
            f"with {self.detector.name}"
        )
        return channel

    def _on_cancelled(self, frame: pika.frame.Method[Any]) -> None:
        # The queue went with the node that held it (it is not durable): declare it again.
        self._cancelled = True
        self.consuming.clear()
        log.warning(
            "%s: the broker cancelled our consumer of %s; consuming again", self.name, self.queue
        )

    def _consume_again(self, channel: BlockingChannel) -> None:
        self.wait_for_stop(CANCEL_PAUSE)  # a leaving node's queue may still be seen for a moment
        channel.queue_declare(self.queue, durable=False)
        channel.basic_consume(self.queue, self._on_request, auto_ack=False)
        self._cancelled = False
        self.consuming.set()
        log.info("%s: consuming %s again", self.name, self.queue)

    def _drop_connection(self) -> None:
        self.consuming.clear()
        connection, self._connection = self._connection, None
        close_quietly(connection)

    def _on_request(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        if not properties.reply_to or not properties.correlation_id:
            WORK_DONE.labels("malformed").inc()
            log.error(
                "%s: request %d has no reply_to or correlation_id; dropped",
                self.name,
                method.delivery_tag,
            )
            channel.basic_ack(method.delivery_tag)
            return
        with WORK_SECONDS.time():
            reply, outcome = self._answer(body)
        # Confirmed before the ack: a request is never acked with its answer lost on the way.
        channel.basic_publish(
            "",
            str(properties.reply_to),
            reply,
            pika.BasicProperties(
                correlation_id=properties.correlation_id, content_type=REPLY_CONTENT_TYPE
            ),
        )
        channel.basic_ack(method.delivery_tag)
        WORK_DONE.labels(outcome).inc()

    def _answer(self, image: bytes) -> tuple[bytes, str]:
        try:
            decision = decide(self.detector, image)
        except DetectionError as exc:
            log.warning("%s: detection failed: %s", self.name, exc)
            return encode_error(exc), exc.reason
        except Exception as exc:  # a backend's bug must not cost the worker
            log.exception("%s: %s raised unexpectedly", self.name, self.detector.name)
            text = redact(str(exc))[:200]
            return encode_error(DetectionError("error", f"{type(exc).__name__}: {text}")), "error"
        people = sum(1 for detection in decision.detections if detection.person)
        log.log(
            logging.INFO if people else logging.DEBUG,
            "%s: %d person(s) among %d detection(s), by %s",
            self.name,
            people,
            len(decision.detections),
            decision.backend,
        )
        return encode_decision(decision), "answered"
