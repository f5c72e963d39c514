"""The detection backends by name, each a module here with ``from_settings(settings)``,
imported only when chosen so OpenCV, onnxruntime and boto3 load only where used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from snapshot_processor.detection.base import Detector, NoDetector
from snapshot_processor.detection.guard import CostGuard

if TYPE_CHECKING:
    from snapshot_processor.detection.settings import DetectionSettings

BACKENDS: dict[str, str | None] = {
    "rekognition": "snapshot_processor.detection.rekognition",
    "local": "snapshot_processor.detection.local",
    "onnx": "snapshot_processor.detection.onnx",
    "none": None,
}


def make_detector(settings: DetectionSettings) -> Detector:
    """The configured backend (``none`` unless detection is enabled)."""
    module = BACKENDS[settings.backend]
    if module is None:
        return NoDetector()
    detector: Detector = importlib.import_module(module).from_settings(settings)
    return detector


def make_guard(settings: DetectionSettings) -> CostGuard:
    return CostGuard(
        dedupe_window=settings.dedupe_seconds,
        max_per_hour=settings.max_per_hour,
        max_per_day=settings.max_per_day,
    )
