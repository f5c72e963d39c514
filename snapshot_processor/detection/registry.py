"""Chooses the detection backend the settings ask for."""

from __future__ import annotations

from snapshot_processor.config import Settings
from snapshot_processor.detection import CostGuard, Detector, NoDetector


def make_detector(settings: Settings) -> Detector:
    """The configured backend; the local ones import OpenCV / onnxruntime only here."""
    backend = settings.detection_backend
    if backend == "rekognition":
        from snapshot_processor.detection.rekognition import RekognitionDetector

        return RekognitionDetector(
            settings.aws_region,
            min_confidence=settings.detection_min_confidence,
            max_labels=settings.detection_max_labels,
            person_min_confidence=settings.person_min_confidence,
        )
    if backend == "local":
        from snapshot_processor.detection.local import HogPeopleDetector

        return HogPeopleDetector()
    if backend == "onnx":
        from snapshot_processor.detection.local import OnnxDetector

        assert settings.onnx_model_path is not None  # checked by the settings
        return OnnxDetector(
            settings.onnx_model_path,
            labels=settings.onnx_labels or None,
            score_threshold=settings.detection_min_confidence / 100,
            person_min_confidence=settings.person_min_confidence,
        )
    return NoDetector()


def make_guard(settings: Settings) -> CostGuard:
    """The dedupe window and call caps."""
    return CostGuard(
        dedupe_window=settings.detection_dedupe_seconds,
        max_per_hour=settings.detection_max_per_hour,
        max_per_day=settings.detection_max_per_day,
    )
