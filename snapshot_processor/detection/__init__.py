"""Object detection for snapshots: Rekognition, a local CPU model, or none.

``base`` holds the port (:class:`Detector`), the record (:class:`Detection`) and the
person rule; backends live in ``rekognition`` and ``local`` (the latter needs the
``local`` extra), the cost guard in ``guard``, the chain's stage in ``stage``.
"""

from __future__ import annotations

from snapshot_processor.detection.base import (
    Box,
    Detection,
    DetectionError,
    Detector,
    NoDetector,
    PersonRule,
    is_person,
)
from snapshot_processor.detection.guard import CostGuard

__all__ = [
    "Box",
    "CostGuard",
    "Detection",
    "DetectionError",
    "Detector",
    "NoDetector",
    "PersonRule",
    "is_person",
]
