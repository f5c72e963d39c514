"""A user's YOLO-style ONNX model on the CPU; onnxruntime (``local`` extra) loads lazily."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from snapshot_processor.detection.base import Box, Detection, DetectionError, is_person
from snapshot_processor.detection.local import Image, decode, require

if TYPE_CHECKING:
    from snapshot_processor.detection.settings import DetectionSettings

log = logging.getLogger(__name__)

# The 80 COCO class names in the order YOLO models trained on COCO use; 0 is "person".
# fmt: off
COCO_LABELS: Final[tuple[str, ...]] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# fmt: on

LAYOUTS: Final = ("auto", "yolov5", "yolov8")


class OnnxDetector:
    """A user-supplied YOLO-style ONNX model run by onnxruntime on the CPU.

    Input: NCHW float32 RGB in 0..1, letterboxed (grey 114) to ``input_size`` square or
    the model's own fixed size. Output, in input pixels: ``(1, N, 5 + C)`` YOLOv5 rows
    ``[cx, cy, w, h, objectness, C scores]`` or ``(1, 4 + C, N)`` YOLOv8 columns
    ``[cx, cy, w, h, C scores]``; ``layout="auto"`` decides by shape with C = len(labels),
    and ``(1, N, 5)`` is a one-class YOLOv5. ``score_threshold`` is 0..1,
    ``person_min_confidence`` 0-100; a class index past ``labels`` is ``class_<n>``."""

    name = "onnx"

    def __init__(
        self,
        model_path: Path,
        labels: Sequence[str] | None = None,
        input_size: int = 640,
        score_threshold: float = 0.5,
        *,
        nms_threshold: float = 0.45,
        layout: str = "auto",
        person_min_confidence: float | None = None,
        threads: int = 0,
    ) -> None:
        require("cv2")
        require("onnxruntime")
        import onnxruntime  # type: ignore[import-untyped]

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.model_path}")
        self.labels = tuple(labels) if labels is not None else COCO_LABELS
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.layout = layout
        self.person_min_confidence = (
            self.score_threshold * 100.0
            if person_min_confidence is None
            else float(person_min_confidence)
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ValueError(f"cannot load ONNX model {self.model_path}: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self._input_name: str = model_input.name
        fixed = [d if isinstance(d, int) and d > 0 else None for d in list(model_input.shape)[2:4]]
        self.input_height = fixed[0] if len(fixed) == 2 and fixed[0] else input_size
        self.input_width = fixed[1] if len(fixed) == 2 and fixed[1] else input_size
        log.info(
            "ONNX model %s: input %r %dx%d, %d labels",
            self.model_path.name,
            self._input_name,
            self.input_width,
            self.input_height,
            len(self.labels),
        )

    def detect(self, image: bytes) -> list[Detection]:
        frame = decode(image)
        height, width = frame.shape[:2]
        tensor, ratio, left, top = self._letterbox(frame)
        failure: DetectionError | None = None
        try:
            outputs = self._session.run(None, {self._input_name: tensor})
        except Exception as exc:  # onnxruntime's errors are untyped
            failure = DetectionError("error", f"the ONNX model failed: {type(exc).__name__}")
        if failure is not None:
            raise failure
        centres, scores, classes = self._candidates(np.asarray(outputs[0], dtype=np.float32))
        found: list[Detection] = []
        for index in self._suppress(centres, scores, classes):
            cx, cy, w, h = (float(v) for v in centres[index])
            box = Box.from_pixels(
                (cx - w / 2 - left) / ratio,
                (cy - h / 2 - top) / ratio,
                (cx + w / 2 - left) / ratio,
                (cy + h / 2 - top) / ratio,
                width,
                height,
            )
            if box is None:
                continue
            n = int(classes[index])
            label = self.labels[n] if 0 <= n < len(self.labels) else f"class_{n}"
            confidence = min(max(float(scores[index]) * 100.0, 0.0), 100.0)
            person = is_person(label, (), confidence, self.person_min_confidence)
            found.append(Detection(label, confidence, box, person))
        found.sort(key=lambda d: d.confidence, reverse=True)
        return found

    def _letterbox(self, frame: Image) -> tuple[npt.NDArray[np.float32], float, int, int]:
        import cv2

        height, width = frame.shape[:2]
        ratio = min(self.input_width / width, self.input_height / height)
        new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        left, top = (self.input_width - new_w) // 2, (self.input_height - new_h) // 2
        canvas = np.full((self.input_height, self.input_width, 3), 114, dtype=np.uint8)
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas[top : top + new_h, left : left + new_w] = resized
        rgb = canvas[:, :, ::-1]  # OpenCV decodes to BGR; YOLO models take RGB
        tensor = np.ascontiguousarray(rgb.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)
        tensor /= 255.0
        return tensor, ratio, left, top

    def _candidates(
        self, output: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """``(N, 4)`` centre boxes, ``(N,)`` scores and class indices, over the threshold."""
        rows = output[0] if output.ndim == 3 and output.shape[0] == 1 else output
        if rows.ndim != 2:
            raise DetectionError("error", f"unexpected ONNX output shape {output.shape}")
        layout = self.layout if self.layout != "auto" else self._guess_layout(rows.shape)
        if layout == "yolov8":
            rows = rows.T
        if rows.shape[1] < 5:
            raise DetectionError("error", f"ONNX output {output.shape} is too narrow")
        if layout == "yolov8":
            class_scores = rows[:, 4:]
            classes = class_scores.argmax(axis=1)
            scores = class_scores.max(axis=1)
        elif rows.shape[1] == 5:  # one class, no separate class score
            classes = np.zeros(len(rows), dtype=np.int64)
            scores = rows[:, 4]
        else:
            class_scores = rows[:, 5:]
            classes = class_scores.argmax(axis=1)
            scores = rows[:, 4] * class_scores.max(axis=1)
        keep = scores >= self.score_threshold
        return (
            np.asarray(rows[keep, :4], dtype=np.float32),
            np.asarray(scores[keep], dtype=np.float32),
            np.asarray(classes[keep], dtype=np.int64),
        )

    def _guess_layout(self, shape: tuple[int, ...]) -> str:
        classes = len(self.labels)
        if shape[1] == 5 + classes:
            return "yolov5"
        if shape[0] == 4 + classes:
            return "yolov8"
        # Labels that do not fit: the candidates are the long side (thousands of them).
        return "yolov5" if shape[0] >= shape[1] else "yolov8"

    def _suppress(
        self,
        centres: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        classes: npt.NDArray[np.int64],
    ) -> list[int]:
        import cv2

        if len(scores) == 0:
            return []
        boxes = [
            [float(cx - w / 2), float(cy - h / 2), float(w), float(h)] for cx, cy, w, h in centres
        ]
        keep = cv2.dnn.NMSBoxesBatched(
            boxes,
            [float(s) for s in scores],
            [int(c) for c in classes],
            self.score_threshold,
            self.nms_threshold,
        )
        return [int(i) for i in np.ravel(np.asarray(keep, dtype=np.int64))]


def from_settings(settings: DetectionSettings) -> OnnxDetector:
    assert settings.onnx_model_path is not None  # checked by the settings
    return OnnxDetector(
        settings.onnx_model_path,
        labels=settings.onnx_labels or None,
        score_threshold=settings.min_confidence / 100,
        person_min_confidence=settings.person_min_confidence,
    )
