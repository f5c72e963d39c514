"""Detection as the daemon runs it: one stage with the configured backend, or none."""

from __future__ import annotations

import logging

from pylib.chain.stage import Stage
from pylib.runtime.daemon import Daemon
from snapshot_processor.detection.registry import make_detector, make_guard
from snapshot_processor.detection.settings import DetectionSettings
from snapshot_processor.detection.stage import DetectionStage

log = logging.getLogger(__name__)


def build(settings: DetectionSettings, daemon: Daemon) -> list[Stage]:
    """The detection stage, or nothing when detection is off (left out of the chain)."""
    if settings.backend == "none":
        return []
    detector = make_detector(settings)
    log.info("object detection with %s", detector.name)
    close = getattr(detector, "close", None)  # a backend may hold a client to close
    if callable(close):
        # Added before the chain, so it is closed after the chain has stopped.
        daemon.add_step("detector", lambda: None, lambda timeout: close() is None)
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
