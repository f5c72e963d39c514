"""The detection backends by name, each a module here with ``from_settings(settings)``,
imported only when chosen so OpenCV, onnxruntime and boto3 load only where used."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from snapshot_processor.detection.base import Detector, NoDetector
from snapshot_processor.detection.budget import DailyBudget
from snapshot_processor.detection.cascade import Cascade
from snapshot_processor.detection.guard import CostGuard

if TYPE_CHECKING:
    from snapshot_processor.detection.settings import DetectionSettings

BACKENDS: dict[str, str | None] = {
    "rekognition": "snapshot_processor.detection.rekognition",
    "local": "snapshot_processor.detection.local",
    "onnx": "snapshot_processor.detection.onnx",
    "none": None,
}
BUDGET_FILE = "detection-budget.sqlite3"
# What may stand first in a chain (on this machine) and second (paid per image).
LOCAL = ("local", "onnx")
CLOUD = ("rekognition",)


def make_detector(settings: DetectionSettings, data_root: Path) -> Detector:
    """The configured backend (``none`` unless detection is enabled), or a chain of two
    with its daily budget kept in ``data_root``."""
    chain = settings.chain
    if len(chain) == 1:
        return _backend(chain[0], settings)
    local = _backend(chain[0], settings, floor=settings.cascade_clear)
    try:
        cloud = importlib.import_module(str(BACKENDS[chain[1]])).from_settings(
            settings, budgeted=True
        )
    except BaseException:
        local.close()
        raise
    try:
        budget = DailyBudget(
            data_root / BUDGET_FILE, settings.daily_budget, settings.price_per_image
        )
    except BaseException:
        local.close()
        cloud.close()
        raise
    return Cascade(
        local,
        cloud,
        sure=settings.cascade_sure,
        clear=settings.cascade_clear,
        min_confidence=settings.min_confidence,
        budget=budget,
    )


def _backend(name: str, settings: DetectionSettings, floor: float | None = None) -> Detector:
    module = BACKENDS[name]
    if module is None:
        return NoDetector()
    made = importlib.import_module(module).from_settings
    detector: Detector = made(settings) if floor is None else made(settings, floor=floor)
    return detector


def make_guard(settings: DetectionSettings) -> CostGuard:
    return CostGuard(
        dedupe_window=settings.dedupe_seconds,
        max_per_hour=settings.max_per_hour,
        max_per_day=settings.max_per_day,
    )
