"""The detection stage: snapshots in, the same snapshots with their detections out. At most
one snapshot per camera waits for the detector (a newer one sends it on, marked ``busy``)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import Counter, Histogram

from pylib.chain.envelope import Envelope
from pylib.chain.stage import Stage
from pylib.observe.redact import redact
from pylib.runtime.health import Health
from pylib.runtime.worker import RestartBudget
from snapshot_processor.contract.messages import SNAPSHOT_KIND, SnapshotMessage
from snapshot_processor.detection.annotate import annotate as draw_annotations
from snapshot_processor.detection.annotate import annotated_path
from snapshot_processor.detection.base import Detection, DetectionError, Detector
from snapshot_processor.detection.cascade import Decision, decide
from snapshot_processor.detection.guard import DETECTION_CALLS, DETECTION_SKIPPED, CostGuard
from snapshot_processor.storage.files import write_atomically

log = logging.getLogger(__name__)

DETECTION_SECONDS = Histogram(
    "detection_seconds", "Time a detection backend took per image", ["backend"]
)
DETECTION_ERRORS = Counter(
    "detection_errors_total", "Detection calls that failed", ["backend", "reason"]
)

BUSY = "busy"
STOPPING = "stopping"
DISABLED = "disabled"  # backend "none": not counted, nothing was skipped on purpose


def verdict(
    snap: SnapshotMessage,
    *,
    detections: Sequence[Detection] = (),
    analysed: bool = False,
    error: str | None = None,
    skipped: str | None = None,
    annotated: Path | None = None,
    decision: Decision | None = None,
) -> SnapshotMessage:
    return snap.with_detection(
        detections=[detection.as_dict() for detection in detections],
        analysed=analysed,
        error=error,
        skipped=skipped,
        annotated_path=str(annotated) if annotated is not None else None,
        decided_by=decision.backend if decision else None,
        cascade=decision.why if decision else None,
        local_person_confidence=(
            round(decision.local_person_confidence, 2)
            if decision and decision.local_person_confidence is not None
            else None
        ),
    )


class DetectionStage(Stage):
    """Takes snapshots, sends them on with detections (with ``annotate``, a boxed copy beside
    ``storage_path``); on stop, whatever still waits goes on unanalysed, marked ``stopping``."""

    stop_weight = 1.5

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        detector: Detector,
        guard: CostGuard,
        inbox: str | None = None,
        outbox: str | None = None,
        annotate: bool = True,
        stop_timeout: float = 15.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            name,
            stop_event,
            inbox=inbox,
            outbox=outbox,
            stop_timeout=stop_timeout,
            budget=budget,
            on_fatal=on_fatal,
        )
        self.detector = detector
        self.guard = guard
        self.annotate = annotate
        self._detector_thread: threading.Thread | None = None
        # Guards the hand-over between this thread and the detector thread.
        self._changed = threading.Condition()
        self._waiting: OrderedDict[str, SnapshotMessage] = OrderedDict()  # camera -> newest
        self._in_flight: SnapshotMessage | None = None
        # One per detector thread, so a thread given up on at stop never serves a restart.
        self._closing = threading.Event()

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._closing = threading.Event()
        # Not a Worker: it lives and dies with this stage's attempt (joined in on_thread_stop).
        self._detector_thread = threading.Thread(
            target=self._detect_loop,
            args=(self._closing,),
            name=f"{self.name}-detector",
            daemon=True,
        )
        self._detector_thread.start()

    def on_thread_stop(self) -> None:
        self._stop_detector()
        with self._changed:
            abandoned, self._in_flight = self._in_flight, None
            leftovers = list(self._waiting.values())
            self._waiting.clear()
        if abandoned is not None:
            leftovers.insert(0, abandoned)
        for snap in leftovers:
            DETECTION_SKIPPED.labels(STOPPING).inc()
            self.send(verdict(snap, skipped=STOPPING).envelope())
        if leftovers:
            log.info("%s: %d snapshot(s) sent on unanalysed at stop", self.name, len(leftovers))
        super().on_thread_stop()

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

    def finish(self, deadline: float) -> None:
        """Nothing to wait for here: the detector is stopped after the loop ends."""

    def health(self) -> Health:
        """The thread's, and the backend's (a spent budget, a cloud service refusing)."""
        return Health.combine([super().health(), self.detector.health()])

    def on_message(self, envelope: Envelope) -> None:
        if envelope.kind != SNAPSHOT_KIND:
            self.send(envelope)  # done marks and the like pass straight through
            return
        snap = SnapshotMessage.read(envelope)
        if self.detector.name == "none":
            self.send(verdict(snap, skipped=DISABLED).envelope())
            return
        with self._changed:
            older = self._waiting.get(snap.camera_key)
            self._waiting[snap.camera_key] = snap  # a replaced one keeps the camera's turn
            self._changed.notify()
        if older is not None:
            DETECTION_SKIPPED.labels(BUSY).inc()
            log.debug(
                "%s: %s busy; snapshot %s sent on unanalysed",
                self.name,
                older.camera_key,
                older.event_id,
            )
            self.send(verdict(older, skipped=BUSY).envelope())

    def _detect_loop(self, closing: threading.Event) -> None:
        while True:
            with self._changed:
                while not self._waiting and not closing.is_set():
                    self._changed.wait()
                if closing.is_set():
                    return
                _, snap = self._waiting.popitem(last=False)
                self._in_flight = snap
            try:
                result = self._analyse(snap)
            except Exception as exc:  # a bug here must not cost the snapshot or the thread
                DETECTION_SKIPPED.labels("error").inc()
                log.exception("%s: analysing %s failed", self.name, snap.event_id)
                result = verdict(snap, error=f"error: {type(exc).__name__}")
            with self._changed:
                if self._in_flight is not snap:
                    continue  # given up on at stop and already sent on
                self._in_flight = None
            self.emit(result.envelope())

    def _analyse(self, snap: SnapshotMessage) -> SnapshotMessage:
        reason = self.guard.check(snap.image)
        if reason is not None:
            DETECTION_SKIPPED.labels(reason).inc()
            log.info("%s: snapshot %s not analysed: %s", self.name, snap.event_id, reason)
            return verdict(snap, skipped=reason)
        backend = self.detector.name
        DETECTION_CALLS.labels(backend).inc()
        started = time.monotonic()
        try:
            decision = decide(self.detector, snap.image)
            detections = decision.detections
        except DetectionError as exc:
            return self._failed(snap, exc)
        except Exception as exc:
            log.exception("%s: %s raised unexpectedly", self.name, backend)
            text = redact(str(exc))[:200]
            return self._failed(snap, DetectionError("error", f"{type(exc).__name__}: {text}"))
        finally:
            DETECTION_SECONDS.labels(backend).observe(time.monotonic() - started)
        people = sum(1 for detection in detections if detection.person)
        log.log(
            logging.INFO if people else logging.DEBUG,
            "%s: %s: %d person(s) among %d detection(s)",
            self.name,
            snap.camera_key,
            people,
            len(detections),
        )
        annotated = self._annotate(snap, detections) if self.annotate else None
        return verdict(
            snap, detections=detections, analysed=True, annotated=annotated, decision=decision
        )

    def _failed(self, snap: SnapshotMessage, error: DetectionError) -> SnapshotMessage:
        DETECTION_SKIPPED.labels("error").inc()
        DETECTION_ERRORS.labels(self.detector.name, error.reason).inc()
        log.warning(
            "%s: detection of %s (%s) failed: %s", self.name, snap.event_id, snap.camera_key, error
        )
        return verdict(snap, error=str(error))

    def _annotate(self, snap: SnapshotMessage, detections: Sequence[Detection]) -> Path | None:
        if not any(d.box is not None for d in detections):
            return None
        target = annotated_path(Path(snap.storage_path))
        try:
            write_atomically(target, draw_annotations(snap.image, detections))
        except (DetectionError, OSError) as exc:
            log.warning("%s: could not write %s: %s", self.name, target, exc)
            return None
        return target
