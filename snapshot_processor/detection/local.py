"""The ``local`` backend (OpenCV's HOG people detector) and the image decoding the ONNX
backend shares; OpenCV (the ``local`` extra) is imported only when a detector is made."""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from pylib.runtime.health import Health
from snapshot_processor.detection.base import Box, Detection, DetectionError

if TYPE_CHECKING:
    from snapshot_processor.detection.settings import DetectionSettings

INSTALL_HINT: Final = (
    "the local detector needs the 'local' extra: run `poetry install -E local` "
    "(or `pip install 'snapshot-processor[local]'`)"
)

Image = npt.NDArray[np.uint8]


def require(module: str) -> None:
    """Import ``module`` now, or raise an ImportError that says how to install it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT}; {module} is missing ({exc})") from exc


def decode(image: bytes) -> Image:
    """A JPEG (or PNG...) as a BGR array; :class:`DetectionError` if it is not an image."""
    import cv2

    if not image:
        raise DetectionError("invalid_image", "empty image")
    failure: DetectionError | None = None
    frame = None
    try:
        frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        failure = DetectionError("invalid_image", "OpenCV could not decode the image")
    if failure is not None:
        raise failure
    if frame is None or frame.size == 0:
        raise DetectionError("invalid_image", f"not a decodable image ({len(image)} bytes)")
    return np.asarray(frame, dtype=np.uint8)


def hog_confidence(weight: float) -> float:
    """Map a HOG hit's SVM weight (signed distance from the plane) to 0-100 by a logistic:
    weight 0 is 50, 0.2 is 60 (the default minimum), 1.0 is 88."""
    return 100.0 / (1.0 + math.exp(-2.0 * weight))


def hog_weight(confidence: float) -> float:
    """The SVM weight whose :func:`hog_confidence` is ``confidence`` (its inverse)."""
    confidence = min(max(confidence, 0.01), 99.99)
    return 0.5 * math.log(confidence / (100.0 - confidence))


class HogPeopleDetector:
    """OpenCV's HOG + linear SVM pedestrian detector; finds upright people, label ``Person``.
    A grey ``margin`` lets the 64x128 whole-body window hang over the edge (legs cut off);
    a group needs more than ``group_threshold`` hits (no lone texture hits)."""

    name = "hog"

    def __init__(
        self,
        min_confidence: float = 60.0,
        *,
        hit_threshold: float = 0.0,
        max_width: int = 640,
        margin: float = 0.25,
        win_stride: tuple[int, int] = (8, 8),
        padding: tuple[int, int] = (8, 8),
        scale: float = 1.05,
        group_threshold: int = 2,
        nms_threshold: float = 0.3,
        person_min_confidence: float | None = None,
    ) -> None:
        require("cv2")
        import cv2

        self.min_confidence = float(min_confidence)
        self.max_width = max_width
        self.margin = margin
        self.win_stride = win_stride
        self.padding = padding
        self.scale = scale
        self.group_threshold = group_threshold
        self.nms_threshold = nms_threshold
        self.hit_threshold = hit_threshold
        # None: every hit is a person (this detector finds nothing else).
        self.person_min_confidence = person_min_confidence
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector()))

    def detect(self, image: bytes) -> list[Detection]:
        import cv2

        frame = decode(image)
        height, width = frame.shape[:2]
        if width > self.max_width:
            size = (self.max_width, max(1, round(height * self.max_width / width)))
            frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
            height, width = frame.shape[:2]
        pad_y, pad_x = int(height * self.margin), int(width * self.margin)
        framed = cv2.copyMakeBorder(
            frame, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=(128, 128, 128)
        )
        rects, weights = self._hog.detectMultiScale(
            framed,
            hitThreshold=self.hit_threshold,
            winStride=self.win_stride,
            padding=self.padding,
            scale=self.scale,
            groupThreshold=self.group_threshold,
        )
        if len(rects) == 0:
            return []
        boxes = [[float(v) for v in rect] for rect in rects]
        scores = [hog_confidence(float(w)) for w in np.ravel(np.asarray(weights))]
        keep = cv2.dnn.NMSBoxes(boxes, scores, self.min_confidence, self.nms_threshold)
        found: list[Detection] = []
        for index in np.ravel(np.asarray(keep, dtype=np.int64)):
            x, y, w, h = boxes[int(index)]
            box = Box.from_pixels(x - pad_x, y - pad_y, x + w - pad_x, y + h - pad_y, width, height)
            if box is not None:
                score = scores[int(index)]
                minimum = self.person_min_confidence
                found.append(Detection("Person", score, box, minimum is None or score >= minimum))
        found.sort(key=lambda d: d.confidence, reverse=True)
        return found

    def close(self) -> None:
        return None

    def health(self) -> Health:
        return Health()


HOG_MIN_CONFIDENCE = 60.0


def from_settings(settings: DetectionSettings, *, floor: float | None = None) -> HogPeopleDetector:
    """The ``local`` backend: it has no settings of its own; in a chain it reports people
    down to ``floor``, so the chain can tell the unsure from the clear."""
    if floor is None:
        return HogPeopleDetector(HOG_MIN_CONFIDENCE)
    # The SVM's hits start at weight 0 (confidence 50): below that only a lower hit
    # threshold finds them. A person is flagged as by the other backends.
    minimum = min(HOG_MIN_CONFIDENCE, floor)
    return HogPeopleDetector(
        minimum,
        hit_threshold=min(0.0, hog_weight(minimum)),
        person_min_confidence=settings.person_min_confidence,
    )
