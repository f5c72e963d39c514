"""A user's ONNX detection model on the CPU; onnxruntime (``local`` extra) loads lazily.

The model's output format (YOLOv5, YOLOv8/YOLOv9/YOLO11, YOLOX, TF-style SSD) is told
from its output's shape or named; see :mod:`snapshot_processor.detection.onnx_formats`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pylib.runtime.health import Health
from snapshot_processor.detection.base import Box, Detection, DetectionError, is_person
from snapshot_processor.detection.local import decode, require
from snapshot_processor.detection.onnx_formats import (
    COCO_LABELS,
    DECODERS,
    FORMATS,
    PREPS,
    TF_COCO_LABELS,
    Candidates,
    InputSpec,
    Placement,
    Prep,
    SsdOutputs,
    YoloxGrid,
    decode_ssd,
    decode_yolov5,
    decode_yolov8,
    decode_yolox,
    dummy_tensor,
    find_ssd,
    format_problem,
    guess_format,
    labels_from_metadata,
    one_line,
    place,
    read_labels_file,
    shapes_text,
    to_tensor,
)

if TYPE_CHECKING:
    from snapshot_processor.detection.settings import DetectionSettings

__all__ = ["COCO_LABELS", "TF_COCO_LABELS", "OnnxDetector", "from_settings"]

log = logging.getLogger(__name__)


class OnnxDetector:
    """A user-supplied ONNX detection model run by onnxruntime on the CPU.

    ``output_format`` is one of :data:`~snapshot_processor.detection.onnx_formats.FORMATS`;
    ``auto`` tells it from the output's shape. The model runs once on a black image when
    made, so a model that cannot load, or whose output fits no format, fails here with a
    one-line ValueError naming the file. Class names: ``labels``, else ``labels_file``,
    else the model's ``names`` metadata, else COCO's (80 for YOLO, TensorFlow's 91 ids for
    SSD); a class index past them is ``class_<n>``. YOLO inputs are letterboxed to the
    model's fixed size, else ``input_size`` square. ``score_threshold`` is 0..1,
    ``person_min_confidence`` 0-100."""

    name = "onnx"

    def __init__(
        self,
        model_path: Path,
        labels: Sequence[str] | None = None,
        input_size: int = 640,
        score_threshold: float = 0.5,
        *,
        labels_file: Path | None = None,
        output_format: str = "auto",
        nms_threshold: float = 0.45,
        person_min_confidence: float | None = None,
        threads: int = 0,
    ) -> None:
        require("cv2")
        require("onnxruntime")
        import onnxruntime  # type: ignore[import-untyped]

        if output_format not in FORMATS:
            raise ValueError(
                f"output_format must be one of {', '.join(FORMATS)}, not {output_format!r}"
            )
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.model_path}")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.person_min_confidence = (
            self.score_threshold * 100.0
            if person_min_confidence is None
            else float(person_min_confidence)
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            session: Any = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ValueError(f"cannot load ONNX model {self.model_path}: {one_line(exc)}") from None
        self._session: Any = session
        model_input = session.get_inputs()[0]
        self._input_name: str = model_input.name
        try:
            self._spec = InputSpec.from_declared(list(model_input.shape), str(model_input.type))
        except ValueError as exc:
            raise ValueError(f"ONNX model {self.model_path}: {exc}") from None
        self.input_height = self._spec.height or input_size
        self.input_width = self._spec.width or input_size

        explicit = tuple(labels) if labels else None
        source = "ONNX_LABELS"
        if explicit is None and labels_file is not None:
            explicit, source = read_labels_file(labels_file), f"{Path(labels_file).name}"
        if explicit is None:
            explicit, source = self._metadata_labels(), "the model's metadata"

        outputs = self._trial_run(input_size)
        output_names = [o.name for o in session.get_outputs()]
        shapes = shapes_text(outputs)
        classes_known = len(explicit) if explicit is not None else len(COCO_LABELS)
        if output_format == "auto":
            guessed = guess_format(
                output_names, outputs, classes_known, self.input_height, self.input_width
            )
            if guessed is None:
                raise ValueError(
                    f"ONNX model {self.model_path}: output {shapes} fits no known format; "
                    "set ONNX_OUTPUT_FORMAT"
                )
            self.format = guessed
        else:
            self.format = output_format
        self._decoder = DECODERS[self.format]
        problem = format_problem(
            self._decoder, output_names, outputs, self.input_height, self.input_width
        )
        if problem is not None:
            raise ValueError(
                f"ONNX model {self.model_path}: output {shapes} does not fit "
                f"ONNX_OUTPUT_FORMAT={self.format} ({problem})"
            )
        if explicit is None:
            explicit = TF_COCO_LABELS if self._decoder == "ssd" else COCO_LABELS
            source = "TensorFlow's COCO ids" if self._decoder == "ssd" else "COCO's"
        self.labels: tuple[str, ...] = explicit
        self._prep: Prep = PREPS[self._decoder]
        self._grid = (
            YoloxGrid.of(self.input_height, self.input_width) if self._decoder == "yolox" else None
        )
        ssd = find_ssd(output_names, outputs) if self._decoder == "ssd" else None
        self._ssd: SsdOutputs | None = ssd
        self._shapes = shapes
        log.info(
            "ONNX model %s: %s output %s, %d labels (%s), input %s",
            self.model_path.name,
            self.format,
            shapes,
            len(self.labels),
            source,
            self._input_text(),
        )

    def _metadata_labels(self) -> tuple[str, ...] | None:
        try:
            metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        except Exception:  # onnxruntime's errors are untyped; metadata is optional
            return None
        return labels_from_metadata(metadata)

    def _trial_run(self, input_size: int) -> list[npt.NDArray[np.generic]]:
        """One run on a black input: the output's shape, and a model that cannot run fails
        now rather than at the first snapshot."""
        try:
            outputs = self._session.run(
                None, {self._input_name: dummy_tensor(self._spec, input_size)}
            )
        except Exception as exc:  # onnxruntime's errors are untyped
            raise ValueError(
                f"ONNX model {self.model_path}: a trial run failed: {one_line(exc)}"
            ) from None
        return [np.asarray(o) for o in outputs]

    def _input_text(self) -> str:
        if self._decoder == "ssd" and (self._spec.height is None or self._spec.width is None):
            return "any size"
        return f"{self.input_width}x{self.input_height}"

    def detect(self, image: bytes) -> list[Detection]:
        if self._session is None:
            raise DetectionError("error", "the ONNX model is closed")
        frame = decode(image)
        height, width = frame.shape[:2]
        if self._decoder == "ssd":
            canvas, placed = place(frame, self._prep, self._spec.width, self._spec.height)
        else:
            canvas, placed = place(frame, self._prep, self.input_width, self.input_height)
        tensor = to_tensor(canvas, self._prep, self._spec)
        failure: DetectionError | None = None
        try:
            outputs = self._session.run(None, {self._input_name: tensor})
        except Exception as exc:  # onnxruntime's errors are untyped
            failure = DetectionError("error", f"the ONNX model failed: {type(exc).__name__}")
        if failure is not None:
            raise failure
        found: list[Detection] = []
        candidates = self._candidates(outputs, placed)
        for index in self._suppress(candidates):
            x1, y1, x2, y2 = (float(v) for v in candidates.corners[index])
            box = Box.from_pixels(
                (x1 - placed.left) / placed.scale_x,
                (y1 - placed.top) / placed.scale_y,
                (x2 - placed.left) / placed.scale_x,
                (y2 - placed.top) / placed.scale_y,
                width,
                height,
            )
            if box is None:
                continue
            n = int(candidates.classes[index])
            label = self.labels[n] if 0 <= n < len(self.labels) else f"class_{n}"
            confidence = min(max(float(candidates.scores[index]) * 100.0, 0.0), 100.0)
            person = is_person(label, (), confidence, self.person_min_confidence)
            found.append(Detection(label, confidence, box, person))
        found.sort(key=lambda d: d.confidence, reverse=True)
        return found

    def _candidates(self, outputs: Sequence[Any], placed: Placement) -> Candidates:
        if self._decoder == "ssd":
            assert self._ssd is not None
            arrays = [np.asarray(o) for o in outputs]
            return decode_ssd(arrays, self._ssd, self.score_threshold, placed.width, placed.height)
        first = np.asarray(outputs[0], dtype=np.float32)
        if first.ndim != 3 or first.shape[0] != 1:  # a dynamic model may change its mind
            raise DetectionError("error", f"unexpected ONNX output shape {first.shape}")
        if self._decoder == "yolox":
            assert self._grid is not None
            if first.shape[1] != len(self._grid.strides):
                raise DetectionError("error", f"unexpected YOLOX output shape {first.shape}")
            return decode_yolox(first, self.score_threshold, self._grid)
        if self._decoder == "yolov8":
            return decode_yolov8(first, self.score_threshold)
        return decode_yolov5(first, self.score_threshold)

    def _suppress(self, candidates: Candidates) -> list[int]:
        import cv2

        if len(candidates.scores) == 0:
            return []
        if candidates.suppressed:
            return list(range(len(candidates.scores)))
        boxes = [
            [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            for x1, y1, x2, y2 in candidates.corners
        ]
        keep = cv2.dnn.NMSBoxesBatched(
            boxes,
            [float(s) for s in candidates.scores],
            [int(c) for c in candidates.classes],
            self.score_threshold,
            self.nms_threshold,
        )
        return [int(i) for i in np.ravel(np.asarray(keep, dtype=np.int64))]

    def close(self) -> None:
        """Release the onnxruntime session (and its memory); ``detect`` fails after."""
        self._session = None

    def health(self) -> Health:
        """No problems (a model that loaded keeps working); the detail names the model."""
        detail = {
            "model": self.model_path.name,
            "format": self.format,
            "output": self._shapes,
            "labels": len(self.labels),
            "input": self._input_text(),
        }
        if self._session is None:
            detail["closed"] = True
        return Health(detail={"detection": {"onnx": detail}})


def from_settings(settings: DetectionSettings, *, floor: float | None = None) -> OnnxDetector:
    """The ``onnx`` backend; in a chain it reports what it finds down to ``floor`` (0-100),
    so the chain can tell the unsure from the clear."""
    assert settings.onnx_model_path is not None  # checked by the settings
    minimum = settings.min_confidence if floor is None else min(settings.min_confidence, floor)
    return OnnxDetector(
        settings.onnx_model_path,
        labels=settings.onnx_labels or None,
        labels_file=settings.onnx_labels_file,
        output_format=settings.onnx_format,
        score_threshold=minimum / 100,
        person_min_confidence=settings.person_min_confidence,
    )
