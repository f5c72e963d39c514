"""Detection as the daemon runs it: one stage with the configured backend or chain, or none."""

from __future__ import annotations

import logging
from pathlib import Path

from pylib.chain.stage import Stage
from pylib.runtime.daemon import Daemon, StartError
from snapshot_processor.detection.base import DetectionError
from snapshot_processor.detection.budget import BudgetError
from snapshot_processor.detection.registry import make_detector, make_guard
from snapshot_processor.detection.settings import DetectionSettings
from snapshot_processor.detection.stage import DetectionStage

log = logging.getLogger(__name__)


def build(settings: DetectionSettings, daemon: Daemon, data_root: Path) -> list[Stage]:
    """The detection stage, or nothing when detection is off (left out of the chain). A
    backend that cannot load stops the start with one line: which file, and why."""
    if settings.backend == "none":
        return []
    try:
        detector = make_detector(settings, data_root)
    except (OSError, ValueError, ImportError, DetectionError, BudgetError) as exc:
        raise StartError(f"detection ({settings.backend}) cannot start: {exc}") from None
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
