"""The detection stage: snapshots in, the same snapshots with their detections out.

The stage's own thread owns both sockets and never waits for the detector: it keeps
pulling, queues at most one snapshot per camera for the detector thread (a newer one
for the same camera sends the waiting one on at once, marked ``busy``), passes other
messages straight through and forwards what the detector finished. Every snapshot
that comes in goes out, analysed or with the reason it was not.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import Counter

from pylib.envelope import Envelope
from pylib.redact import redact
from pylib.relay import POLL_MS, Sender, bind_pull, drain, unpack_or_reject
from pylib.worker import RestartBudget, Worker
from snapshot_processor.detection.annotate import annotate as draw_annotations
from snapshot_processor.detection.annotate import annotated_path
from snapshot_processor.detection.base import Detection, DetectionError, Detector
from snapshot_processor.detection.guard import DETECTION_CALLS, DETECTION_SKIPPED, CostGuard
from snapshot_processor.snapshot import SNAPSHOT_KIND
from snapshot_processor.storage import write_atomically

log = logging.getLogger(__name__)

DETECTION_ERRORS = Counter(
    "detection_errors_total", "Detection calls that failed", ["backend", "reason"]
)

BUSY = "busy"
STOPPING = "stopping"
DISABLED = "disabled"  # backend "none": not counted, nothing was skipped on purpose

#: Keys the stage adds to a snapshot's body.
RESULT_KEYS = ("detections", "analysed", "detection_error", "detection_skipped", "annotated_path")


def with_detections(
    envelope: Envelope,
    *,
    detections: Sequence[Detection] = (),
    analysed: bool = False,
    error: str | None = None,
    skipped: str | None = None,
    annotated: Path | None = None,
) -> Envelope:
    """The snapshot envelope with the stage's verdict added (same id and creation time)."""
    body: dict[str, Any] = {
        **envelope.body,
        "detections": [detection.as_dict() for detection in detections],
        "analysed": analysed,
        "detection_error": error,
        "detection_skipped": skipped,
        "annotated_path": str(annotated) if annotated is not None else None,
    }
    return Envelope(envelope.kind, body, envelope.id, envelope.created)


class DetectionStage(Worker):
    """Pulls snapshot envelopes from ``inbox`` (bound), pushes them on to ``outbox``.

    ``detector`` runs on one thread of the stage's own; ``guard`` is asked before each
    call. With ``annotate``, a copy with boxes drawn is written beside the snapshot's
    ``storage_path`` when something was located. On stop the inbox is drained, the
    detector finishes its current call (waiting at most ``stop_timeout`` seconds) and
    everything still waiting is sent on unanalysed, marked ``stopping``.
    """

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        detector: Detector,
        guard: CostGuard,
        inbox: str,
        outbox: str,
        annotate: bool = True,
        stop_timeout: float = 15.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.detector = detector
        self.guard = guard
        self.inbox = inbox
        self.outbox = outbox
        self.annotate = annotate
        self.stop_timeout = stop_timeout
        # Set once the PULL socket is bound, so upstream can start sending.
        self.ready = threading.Event()
        self._pull: zmq.Socket[bytes] | None = None
        self._sender: Sender | None = None
        self._detector_thread: threading.Thread | None = None
        # Guards the hand-over between this thread and the detector thread.
        self._changed = threading.Condition()
        self._waiting: OrderedDict[str, Envelope] = OrderedDict()  # camera -> newest snapshot
        self._in_flight: Envelope | None = None
        # One per detector thread, so a thread given up on at stop never serves a restart.
        self._closing = threading.Event()
        self._results: queue.SimpleQueue[Envelope] = queue.SimpleQueue()

    # --- the stage's thread ---------------------------------------------------------
    def on_thread_open(self) -> None:
        # Sockets live as long as the thread: a restart must not rebind the inbox.
        self._pull = bind_pull(self.inbox)
        self._sender = Sender(self.outbox)

    def on_thread_close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None

    def on_thread_start(self) -> None:
        self._closing = threading.Event()
        self._detector_thread = threading.Thread(
            target=self._detect_loop,
            args=(self._closing,),
            name=f"{self.name}-detector",
            daemon=True,
        )
        self._detector_thread.start()
        self.ready.set()

    def work(self) -> None:
        pull = self._pull
        assert pull is not None
        while self.should_keep_running():
            if pull.poll(POLL_MS // 2):
                self._take_all(pull)
            self._forward()
        self._take_all(pull)  # what upstream handed over before the stop

    def on_thread_stop(self) -> None:
        self.ready.clear()
        self._stop_detector()
        with self._changed:
            abandoned, self._in_flight = self._in_flight, None
            leftovers = list(self._waiting.values())
            self._waiting.clear()
        if abandoned is not None:
            leftovers.insert(0, abandoned)
        for envelope in leftovers:
            DETECTION_SKIPPED.labels(STOPPING).inc()
            self._results.put(with_detections(envelope, skipped=STOPPING))
        if leftovers:
            log.info("%s: %d snapshot(s) sent on unanalysed at stop", self.name, len(leftovers))
        self._forward()

    def _stop_detector(self) -> None:
        thread, self._detector_thread = self._detector_thread, None
        with self._changed:
            self._closing.set()
            self._changed.notify_all()
        if thread is None:
            return
        thread.join(self.stop_timeout)
        if thread.is_alive():
            log.error(
                "%s: %s still busy after %.0f s; sending its snapshot on unanalysed",
                self.name,
                self.detector.name,
                self.stop_timeout,
            )

    def _take_all(self, pull: zmq.Socket[bytes]) -> None:
        for data in drain(pull):
            self._take(data)

    def _take(self, data: bytes) -> None:
        envelope = unpack_or_reject(data, self.name)
        if envelope is None:
            return
        if envelope.kind != SNAPSHOT_KIND:
            self._send(envelope)  # 'done' marks and the like pass straight through
            return
        if self.detector.name == "none":
            self._send(with_detections(envelope, skipped=DISABLED))
            return
        image = envelope.body.get("image")
        if not isinstance(image, bytes) or not image:
            DETECTION_SKIPPED.labels("error").inc()
            log.error("%s: snapshot %s carries no image", self.name, envelope.id)
            self._send(with_detections(envelope, error="invalid_image: no image in the snapshot"))
            return
        camera = str(envelope.body.get("camera_key") or "")
        with self._changed:
            older = self._waiting.get(camera)
            self._waiting[camera] = envelope  # a replaced one keeps the camera's turn
            self._changed.notify()
        if older is not None:
            DETECTION_SKIPPED.labels(BUSY).inc()
            log.debug("%s: %s busy; snapshot %s sent on unanalysed", self.name, camera, older.id)
            self._send(with_detections(older, skipped=BUSY))

    def _forward(self) -> None:
        if self._sender is None:  # never started: results wait for the next start
            return
        while True:
            try:
                envelope = self._results.get_nowait()
            except queue.Empty:
                return
            self._send(envelope)

    def _send(self, envelope: Envelope) -> None:
        assert self._sender is not None
        self._sender.send(envelope)

    # --- the detector's thread ------------------------------------------------------
    def _detect_loop(self, closing: threading.Event) -> None:
        while True:
            with self._changed:
                while not self._waiting and not closing.is_set():
                    self._changed.wait()
                if closing.is_set():
                    return
                _, envelope = self._waiting.popitem(last=False)
                self._in_flight = envelope
            try:
                result = self._analyse(envelope)
            except Exception as exc:  # a bug here must not cost the snapshot or the thread
                DETECTION_SKIPPED.labels("error").inc()
                log.exception("%s: analysing %s failed", self.name, envelope.id)
                result = with_detections(envelope, error=f"error: {type(exc).__name__}")
            with self._changed:
                if self._in_flight is not envelope:
                    continue  # given up on at stop and already sent on
                self._in_flight = None
            self._results.put(result)

    def _analyse(self, envelope: Envelope) -> Envelope:
        body = envelope.body
        image: bytes = body["image"]
        reason = self.guard.check(image)
        if reason is not None:
            DETECTION_SKIPPED.labels(reason).inc()
            log.info("%s: snapshot %s not analysed: %s", self.name, envelope.id, reason)
            return with_detections(envelope, skipped=reason)
        backend = self.detector.name
        DETECTION_CALLS.labels(backend).inc()
        try:
            detections = self.detector.detect(image)
        except DetectionError as exc:
            return self._failed(envelope, exc)
        except Exception as exc:
            log.exception("%s: %s raised unexpectedly", self.name, backend)
            text = redact(str(exc))[:200]
            return self._failed(envelope, DetectionError("error", f"{type(exc).__name__}: {text}"))
        people = sum(1 for detection in detections if detection.person)
        log.log(
            logging.INFO if people else logging.DEBUG,
            "%s: %s: %d person(s) among %d detection(s)",
            self.name,
            body.get("camera_key"),
            people,
            len(detections),
        )
        annotated = self._annotate(body, detections) if self.annotate else None
        return with_detections(envelope, detections=detections, analysed=True, annotated=annotated)

    def _failed(self, envelope: Envelope, error: DetectionError) -> Envelope:
        DETECTION_SKIPPED.labels("error").inc()
        DETECTION_ERRORS.labels(self.detector.name, error.reason).inc()
        log.warning(
            "%s: detection of %s (%s) failed: %s",
            self.name,
            envelope.id,
            envelope.body.get("camera_key"),
            error,
        )
        return with_detections(envelope, error=str(error))

    def _annotate(self, body: dict[str, Any], detections: Sequence[Detection]) -> Path | None:
        storage_path = body.get("storage_path")
        if not storage_path or not any(d.box is not None for d in detections):
            return None
        target = annotated_path(Path(storage_path))
        try:
            write_atomically(target, draw_annotations(body["image"], detections))
        except (DetectionError, OSError) as exc:
            log.warning("%s: could not write %s: %s", self.name, target, exc)
            return None
        return target
