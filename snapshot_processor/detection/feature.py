"""Detection as the daemon runs it: one stage with the configured backend or chain, or none."""

from __future__ import annotations

import logging

import pika

from pylib.amqp.consumer import AmqpListener, RejectedMessageError
from pylib.chain.envelope import Envelope
from pylib.chain.stage import Stage
from pylib.runtime.daemon import Daemon, StartError
from pylib.runtime.worker import Worker
from snapshot_processor.config import Settings
from snapshot_processor.contract import exchanges
from snapshot_processor.contract.feature import params
from snapshot_processor.contract.feedback import FeedbackMessage, FeedbackMessageError
from snapshot_processor.detection.base import DetectionError, Detector
from snapshot_processor.detection.budget import BudgetError
from snapshot_processor.detection.labelled import Feedback, LabelledSet, LabelledSetError
from snapshot_processor.detection.registry import make_detector, make_guard
from snapshot_processor.detection.remote import RemoteDetector, WorkLink
from snapshot_processor.detection.settings import DetectionSettings
from snapshot_processor.detection.stage import DetectionStage
from snapshot_processor.detection.verdicts import VerdictStage
from snapshot_processor.detection.work import work_queue
from snapshot_processor.ops.recent import RecentEvents

log = logging.getLogger(__name__)


def feedback(settings: Settings, daemon: Daemon, recent: RecentEvents) -> Feedback | None:
    """Verdicts on events, kept in the labelled set (closed after everything that writes
    it has stopped); None when detection is off."""
    if settings.detection.backend == "none":
        return None
    try:
        labelled = LabelledSet(settings.snapshots_root_dir, settings.detection.labelled_max)
    except LabelledSetError as exc:
        raise StartError(f"the labelled set cannot be opened: {exc}") from None

    def close(timeout: float) -> bool:
        labelled.close()
        return True

    daemon.add_step("labelled set", lambda: None, close)
    return Feedback(labelled, recent)


def verdicts_from_the_bus(settings: Settings, daemon: Daemon, kept: Feedback) -> list[Worker]:
    """The verdict stage and its listener on ``event.feedback.<topic>``, stage first."""
    stage = VerdictStage(daemon.stop_event, kept.record, on_fatal=daemon.on_fatal)

    def decode(body: bytes, properties: pika.BasicProperties) -> Envelope:
        try:
            return FeedbackMessage.parse(body, settings.broker.trigger_max_bytes).envelope()
        except FeedbackMessageError as exc:
            raise RejectedMessageError(exc.reason, str(exc)) from None

    listener = AmqpListener(
        "feedback-listener",
        daemon.stop_event,
        params=params(settings, "feedback"),
        setup=lambda channel: exchanges.declare_feedback_queue(channel, settings),
        decode=decode,
        forward_to=stage.inbox,
        retry=settings.broker.RECONNECT,
        requeue=settings.broker.REQUEUE,
        on_fatal=daemon.on_fatal,
    )
    return [stage, listener]


def build(whole: Settings, daemon: Daemon) -> list[Stage]:
    """The detection stage, or nothing when detection is off (left out of the chain). A
    backend that cannot load stops the start with one line: which file, and why."""
    settings = whole.detection
    if settings.backend == "none":
        return []
    detector = remote(whole, daemon) if settings.remote else local(settings, whole)
    log.info("object detection with %s", detector.name)

    # Added before the chain, so it is closed after the chain has stopped.
    def close(timeout: float) -> bool:
        detector.close()
        return True

    daemon.add_step("detector", lambda: None, close)
    return [
        DetectionStage(
            "detection",
            daemon.stop_event,
            detector=detector,
            guard=make_guard(settings),
            annotate=settings.annotate,
            on_fatal=daemon.on_fatal,
        )
    ]


def local(settings: DetectionSettings, whole: Settings) -> Detector:
    """The configured backend or chain, in this process."""
    try:
        return make_detector(settings, whole.snapshots_root_dir)
    except (OSError, ValueError, ImportError, DetectionError, BudgetError) as exc:
        raise StartError(f"detection ({settings.backend}) cannot start: {exc}") from None


def remote(settings: Settings, daemon: Daemon) -> Detector:
    """Detection by the workers on the work queue, over a link of its own; the link is
    added before the chain, so it stops after the chain's last frame."""
    link = WorkLink(
        daemon.stop_event,
        params=params(settings, "detection"),
        queue=work_queue(settings.broker.exchange, settings.broker.device_topic),
        timeout=settings.detection.remote_timeout,
        retry=settings.broker.RECONNECT,
        on_fatal=daemon.on_fatal,
    )
    daemon.add(link)
    return RemoteDetector(link)
