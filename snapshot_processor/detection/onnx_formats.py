"""What the ONNX backend knows of each model family: how its input is prepared, how its
output is read, how a format is told from the output's shape, and where class names come
from. Only numpy here; OpenCV is imported when an image is prepared.

Formats (``ONNX_OUTPUT_FORMAT``):

- ``yolov5``: one output ``(1, N, 5 + C)``, rows ``[cx, cy, w, h, objectness, C scores]``
  in input pixels (Ultralytics YOLOv5's export; N is 3 anchors per grid cell).
- ``yolov8`` (also ``yolov9``, ``yolo11``: Ultralytics exports them with the same
  ``Detect`` head): one output ``(1, 4 + C, N)``, columns ``[cx, cy, w, h, C scores]``.
- ``yolox``: one output ``(1, N, 5 + C)`` as Megvii's ``tools/export_onnx.py`` writes it by
  default (without ``--decode_in_inference``): x, y are offsets in grid cells and w, h are
  logs, over the grids of strides 8, 16 and 32 (N is the number of cells); objectness and
  class scores are already sigmoids. Its input is BGR 0..255, padded at the bottom right.
- ``ssd``: TensorFlow Object Detection API exports (the ONNX model zoo's
  ``ssd_mobilenet_v1``): ``detection_boxes (1, N, 4)`` normalised
  ``[ymin, xmin, ymax, xmax]``, ``detection_scores (1, N)``, ``detection_classes (1, N)``
  (class ids as floats, indexing the labels), ``num_detections (1,)``; already suppressed.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from snapshot_processor.detection.local import Image

log = logging.getLogger(__name__)

#: The values of ``ONNX_OUTPUT_FORMAT`` (the settings' ``ONNX_FORMATS``).
FORMATS: Final = ("auto", "yolov5", "yolov8", "yolov9", "yolo11", "yolox", "ssd")
#: The decoder each format name uses.
DECODERS: Final[Mapping[str, str]] = {
    "yolov5": "yolov5",
    "yolov8": "yolov8",
    "yolov9": "yolov8",
    "yolo11": "yolov8",
    "yolox": "yolox",
    "ssd": "ssd",
}
YOLOX_STRIDES: Final = (8, 16, 32)
#: The longest ``names`` metadata read (a literal of thousands of classes fits easily).
MAX_METADATA_CHARS: Final = 1_000_000

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
# The ids TensorFlow's COCO label map (mscoco_label_map.pbtxt) leaves out of 1..90.
TF_COCO_GAPS: Final = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})


def _tf_coco_labels() -> tuple[str, ...]:
    names = iter(COCO_LABELS)
    ids = [f"class_{i}" if i in TF_COCO_GAPS else next(names) for i in range(1, 91)]
    return ("background", *ids)


#: TensorFlow's COCO ids as indices: 0 is background, 1 "person", 3 "car", 90 "toothbrush".
TF_COCO_LABELS: Final = _tf_coco_labels()

Array = npt.NDArray[np.float32]


# --- class names ------------------------------------------------------------------------


def read_labels_file(path: Path) -> tuple[str, ...]:
    """One class name a line, in the model's order; blank lines and ``#`` comments skipped.
    ValueError (one line, naming the file) if it cannot be read or names nothing."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"ONNX_LABELS_FILE {path}: cannot read it: {one_line(exc)}") from exc
    names = tuple(line.strip() for line in text.splitlines() if line.strip() and not _comment(line))
    if not names:
        raise ValueError(f"ONNX_LABELS_FILE {path}: names no class")
    return names


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def labels_from_metadata(metadata: Mapping[str, str]) -> tuple[str, ...] | None:
    """The class names an export wrote into the model's metadata: Ultralytics (YOLOv5,
    YOLOv8, YOLO11) store ``names`` as a Python literal ``{0: 'person', 1: 'bicycle'}``,
    read with :func:`ast.literal_eval` (never evaluated); a list literal works too. None if
    absent or unreadable; an index missing from a dict becomes ``class_<n>``."""
    text = metadata.get("names")
    if not text or len(text) > MAX_METADATA_CHARS:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        log.warning("ONNX model metadata: 'names' is not a literal; ignored")
        return None
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(k, int) and 0 <= k < 100_000 for k in value)
        and all(isinstance(v, str) for v in value.values())
    ):
        return tuple(value.get(i, f"class_{i}") for i in range(max(value) + 1))
    log.warning("ONNX model metadata: 'names' is neither a list nor an index map; ignored")
    return None


# --- input ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """The model's first input as declared: layout, element type, fixed size (or None)."""

    channels_last: bool
    dtype: type[np.generic]
    height: int | None
    width: int | None

    @classmethod
    def from_declared(cls, shape: Sequence[object], type_name: str) -> InputSpec:
        """From onnxruntime's ``NodeArg``: ``shape`` with ints or names, ``tensor(float)``."""
        dtypes: dict[str, type[np.generic]] = {
            "tensor(float)": np.float32,
            "tensor(float16)": np.float16,
            "tensor(uint8)": np.uint8,
        }
        if type_name not in dtypes:
            raise ValueError(f"its input is {type_name}; float, float16 or uint8 is read")
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if len(dims) != 4:
            raise ValueError(f"its input has {len(dims)} dimensions; an image has 4")
        channels_last = dims[3] == 3 and dims[1] != 3
        height, width = (dims[1], dims[2]) if channels_last else (dims[2], dims[3])
        return cls(channels_last, dtypes[type_name], height, width)


@dataclass(frozen=True)
class Prep:
    """How a format's input is made: colour order, divisor, and where the image goes:
    ``centre`` (letterbox, Ultralytics), ``corner`` (letterbox at the top left, YOLOX),
    ``stretch`` (resized to the input, TF SSD) or ``native`` (the image's own size)."""

    rgb: bool
    divisor: float
    placing: str


PREPS: Final[Mapping[str, Prep]] = {
    "yolov5": Prep(rgb=True, divisor=255.0, placing="centre"),
    "yolov8": Prep(rgb=True, divisor=255.0, placing="centre"),
    "yolox": Prep(rgb=False, divisor=1.0, placing="corner"),
    "ssd": Prep(rgb=True, divisor=1.0, placing="stretch"),
}


@dataclass(frozen=True)
class Placement:
    """Where the image went in the tensor: tensor x = image x * ``scale_x`` + ``left``."""

    scale_x: float
    scale_y: float
    left: int
    top: int
    width: int  # the tensor's
    height: int


def place(
    frame: Image, prep: Prep, width: int | None, height: int | None
) -> tuple[Image, Placement]:
    """The BGR ``frame`` on a canvas of ``width`` x ``height`` (its own size if None or
    ``native``), as ``prep`` says, still BGR uint8 HWC."""
    import cv2

    frame_h, frame_w = frame.shape[:2]
    if prep.placing == "native" or width is None or height is None:
        return frame, Placement(1.0, 1.0, 0, 0, frame_w, frame_h)
    if prep.placing == "stretch":
        resized = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        placed = Placement(width / frame_w, height / frame_h, 0, 0, width, height)
        return np.asarray(resized, dtype=np.uint8), placed
    ratio = min(width / frame_w, height / frame_h)
    if prep.placing == "corner":  # YOLOX's preproc: truncated size, image at the top left
        new_w, new_h = max(1, int(frame_w * ratio)), max(1, int(frame_h * ratio))
        left = top = 0
    else:
        new_w, new_h = max(1, round(frame_w * ratio)), max(1, round(frame_h * ratio))
        left, top = (width - new_w) // 2, (height - new_h) // 2
    canvas = np.full((height, width, 3), 114, dtype=np.uint8)
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Placement(ratio, ratio, left, top, width, height)


def to_tensor(canvas: Image, prep: Prep, spec: InputSpec) -> npt.NDArray[np.generic]:
    """The placed BGR canvas as the model's input: colour order, layout, type, divisor."""
    pixels = canvas[:, :, ::-1] if prep.rgb else canvas
    batch = pixels[np.newaxis] if spec.channels_last else pixels.transpose(2, 0, 1)[np.newaxis]
    if spec.dtype is np.uint8:
        return np.ascontiguousarray(batch, dtype=np.uint8)
    tensor = np.ascontiguousarray(batch, dtype=np.float32)
    if prep.divisor != 1.0:
        tensor /= prep.divisor
    return tensor.astype(spec.dtype, copy=False)


def dummy_tensor(spec: InputSpec, size: int) -> npt.NDArray[np.generic]:
    """A black input of the model's shape (``size`` where a side is not fixed)."""
    height, width = spec.height or size, spec.width or size
    shape = (1, height, width, 3) if spec.channels_last else (1, 3, height, width)
    return np.zeros(shape, dtype=spec.dtype)


# --- output -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Boxes over the threshold: corners ``(N, 4)`` ``x1, y1, x2, y2`` in tensor pixels,
    scores 0..1, class indices; ``suppressed`` if the model already removed overlaps."""

    corners: Array
    scores: Array
    classes: npt.NDArray[np.int64]
    suppressed: bool = False


def shapes_text(outputs: Sequence[npt.NDArray[np.generic]]) -> str:
    """``(1, 84, 8400)``, or several comma-separated."""
    return ", ".join(str(tuple(int(d) for d in o.shape)) for o in outputs)


def yolox_cells(height: int, width: int) -> int:
    """The rows of a YOLOX output: the cells of the grids of strides 8, 16 and 32."""
    return sum((height // s) * (width // s) for s in YOLOX_STRIDES)


@dataclass(frozen=True)
class SsdOutputs:
    """Which outputs are the boxes, scores, classes and count (None: all N are valid)."""

    boxes: int
    scores: int
    classes: int
    count: int | None


_SSD_NAMES: Final = (("boxes", ("box",)), ("scores", ("score",)), ("classes", ("class", "label")))


def find_ssd(names: Sequence[str], outputs: Sequence[npt.NDArray[np.generic]]) -> SsdOutputs | None:
    """The SSD outputs by name (``*box*``, ``*score*``, ``*class*`` or ``*label*``,
    ``num*``), else by shape: ``(1, N, 4)`` boxes, then ``(1, N)`` scores and classes in
    that order (an integer one is the classes), a one-element count. None if they do not fit."""
    found: dict[str, int] = {}
    for role, words in _SSD_NAMES:
        for i, name in enumerate(names):
            if i not in found.values() and any(w in name.casefold() for w in words):
                found[role] = i
                break
    for i, name in enumerate(names):
        if i not in found.values() and name.casefold().startswith("num"):
            found["count"] = i
            break
    rest = [i for i in range(len(outputs)) if i not in found.values()]
    if "boxes" not in found:
        boxes = [i for i in rest if outputs[i].ndim == 3 and outputs[i].shape[2] == 4]
        if boxes:
            found["boxes"] = boxes[0]
            rest.remove(boxes[0])
    if "boxes" not in found:
        return None
    n = outputs[found["boxes"]].shape[1]
    rows = [i for i in rest if outputs[i].ndim == 2 and outputs[i].shape == (1, n)]
    integers = [i for i in rows if np.issubdtype(outputs[i].dtype, np.integer)]
    if "classes" not in found and integers:
        found["classes"] = integers[0]
        rows.remove(integers[0])
    for role in ("scores", "classes"):
        if role not in found and rows:
            found[role] = rows.pop(0)
    if "count" not in found:
        counts = [i for i in rest if i not in found.values() and outputs[i].size == 1]
        if counts:
            found["count"] = counts[0]
    if not {"boxes", "scores", "classes"} <= found.keys():
        return None
    shapes_fit = (
        outputs[found["boxes"]].shape[0] == 1
        and outputs[found["scores"]].size == n
        and outputs[found["classes"]].size == n
        and ("count" not in found or outputs[found["count"]].size == 1)
    )
    if not shapes_fit:
        return None
    return SsdOutputs(found["boxes"], found["scores"], found["classes"], found.get("count"))


def yolo_problem(
    decoder: str, outputs: Sequence[npt.NDArray[np.generic]], height: int, width: int
) -> str | None:
    """Why the first output does not fit a YOLO decoder, or None if it does."""
    shape = tuple(int(d) for d in outputs[0].shape) if outputs else ()
    rows_ok = len(shape) == 3 and shape[0] == 1 and shape[1] >= 1
    if decoder == "yolov5" and not (rows_ok and shape[2] >= 5):
        return "YOLOv5 answers (1, N, 5+C)"
    if decoder == "yolov8" and not (rows_ok and shape[1] >= 5 and shape[2] >= 1):
        return "YOLOv8, YOLOv9 and YOLO11 answer (1, 4+C, N)"
    if decoder == "yolox":
        cells = yolox_cells(height, width)
        if not (rows_ok and shape[2] >= 5 and shape[1] == cells):
            return f"YOLOX at {width}x{height} answers (1, {cells}, 5+C)"
    return None


def grid_cells(height: int, width: int) -> set[int]:
    """The cells of the usual grids (strides 8 to 32, or to 64 for P6 models)."""
    return {
        sum((height // s) * (width // s) for s in strides)
        for strides in ((8, 16, 32), (8, 16, 32, 64))
    }


def guess_format(
    names: Sequence[str],
    outputs: Sequence[npt.NDArray[np.generic]],
    classes: int,
    height: int,
    width: int,
) -> str | None:
    """The decoder the outputs' shapes fit (``classes`` the labels known), None if none.

    Three or more outputs that :func:`find_ssd` places are SSD; other models with more than
    one output (segmentation, ...) are not guessed. One ``(1, A, B)`` output is YOLOv5 rows
    if B is 5 + classes, YOLOv8 columns if A is 4 + classes; else rows if A counts a
    grid's cells (YOLOX) or three times them (YOLOv5's anchors), columns if B counts them.
    Rows as many as YOLOX's grid cells are YOLOX."""
    if len(outputs) >= 3 and find_ssd(names, outputs) is not None:
        return "ssd"
    if len(outputs) != 1 or outputs[0].ndim != 3 or outputs[0].shape[0] != 1:
        return None
    _, long, wide = (int(d) for d in outputs[0].shape)
    cells = grid_cells(height, width)
    if wide == 5 + classes:
        kinds = ["rows"]
    elif long == 4 + classes:
        kinds = ["columns"]
    else:  # the labels do not tell: the candidates are a grid's
        kinds = []
        if long in cells or long in {3 * c for c in cells}:
            kinds.append("rows")
        if wide in cells:
            kinds.append("columns")
    for kind in kinds:
        if kind == "columns":
            decoder = "yolov8"
        else:
            decoder = "yolox" if long == yolox_cells(height, width) else "yolov5"
        if yolo_problem(decoder, outputs, height, width) is None:
            return decoder
    return None


def format_problem(
    decoder: str,
    names: Sequence[str],
    outputs: Sequence[npt.NDArray[np.generic]],
    height: int,
    width: int,
) -> str | None:
    """Why the outputs do not fit ``decoder``, or None."""
    if decoder == "ssd":
        if find_ssd(names, outputs) is None:
            return "SSD answers boxes (1, N, 4), scores (1, N), classes (1, N), num (1,)"
        return None
    return yolo_problem(decoder, outputs, height, width)


def _over(scores: Array, threshold: float) -> npt.NDArray[np.bool_]:
    return np.asarray(scores >= threshold)


def _corners(centres: Array) -> Array:
    cx, cy, w, h = (centres[:, i] for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def decode_yolov5(output: Array, threshold: float) -> Candidates:
    """YOLOv5 rows; ``(1, N, 5)`` is one class with objectness alone."""
    rows = output[0]
    if rows.shape[1] == 5:
        classes = np.zeros(len(rows), dtype=np.int64)
        scores = rows[:, 4]
    else:
        class_scores = rows[:, 5:]
        classes = class_scores.argmax(axis=1)
        scores = rows[:, 4] * class_scores.max(axis=1)
    keep = _over(scores, threshold)
    return Candidates(
        _corners(rows[keep, :4]),
        np.asarray(scores[keep], dtype=np.float32),
        np.asarray(classes[keep], dtype=np.int64),
    )


def decode_yolov8(output: Array, threshold: float) -> Candidates:
    """YOLOv8 / YOLOv9 / YOLO11 columns: the score is the best class score."""
    rows = output[0].T
    class_scores = rows[:, 4:]
    classes = class_scores.argmax(axis=1)
    scores = class_scores.max(axis=1)
    keep = _over(scores, threshold)
    return Candidates(
        _corners(rows[keep, :4]),
        np.asarray(scores[keep], dtype=np.float32),
        np.asarray(classes[keep], dtype=np.int64),
    )


@dataclass(frozen=True)
class YoloxGrid:
    """Each row's cell (x, y) and stride, in YOLOX's order: stride 8's cells row by row,
    then 16's, then 32's."""

    cells: Array  # (N, 2)
    strides: Array  # (N,)

    @classmethod
    def of(cls, height: int, width: int) -> YoloxGrid:
        cells, strides = [], []
        for stride in YOLOX_STRIDES:
            ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
            cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
            strides.append(np.full(xs.size, stride))
        return cls(
            np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)
        )


def decode_yolox(output: Array, threshold: float, grid: YoloxGrid) -> Candidates:
    """Raw YOLOX rows: ``cx = (x + cell x) * stride``, ``w = exp(w) * stride``; the score is
    objectness times the best class score (both sigmoids already)."""
    rows = output[0]
    if rows.shape[1] == 5:
        classes = np.zeros(len(rows), dtype=np.int64)
        scores = rows[:, 4]
    else:
        class_scores = rows[:, 5:]
        classes = class_scores.argmax(axis=1)
        scores = rows[:, 4] * class_scores.max(axis=1)
    keep = _over(scores, threshold)
    kept = rows[keep]
    stride = grid.strides[keep][:, np.newaxis]
    centres = np.empty((len(kept), 4), dtype=np.float32)
    centres[:, :2] = (kept[:, :2] + grid.cells[keep]) * stride
    # exp(20) * 32 is far past any image: a bound that keeps a wild value finite.
    centres[:, 2:4] = np.exp(np.minimum(kept[:, 2:4], 20.0)) * stride
    return Candidates(
        _corners(centres),
        np.asarray(scores[keep], dtype=np.float32),
        np.asarray(classes[keep], dtype=np.int64),
    )


def decode_ssd(
    outputs: Sequence[npt.NDArray[np.generic]],
    which: SsdOutputs,
    threshold: float,
    width: int,
    height: int,
) -> Candidates:
    """TF-style SSD: the first ``num_detections`` rows, boxes scaled to the tensor's
    ``width`` x ``height``; class ids rounded to indices of the labels."""
    boxes = np.asarray(outputs[which.boxes], dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(outputs[which.scores], dtype=np.float32).reshape(-1)
    ids = np.asarray(outputs[which.classes], dtype=np.float64).reshape(-1)
    count = len(boxes)
    if which.count is not None:
        value = float(np.asarray(outputs[which.count]).reshape(-1)[0])
        count = min(count, max(0, int(value))) if math.isfinite(value) else 0
    boxes, scores, ids = boxes[:count], scores[:count], ids[:count]
    keep = _over(scores, threshold) & np.isfinite(ids)
    ymin, xmin, ymax, xmax = (boxes[keep, i] for i in range(4))
    corners = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=1)
    return Candidates(
        corners.astype(np.float32),
        np.asarray(scores[keep], dtype=np.float32),
        np.rint(ids[keep]).astype(np.int64),
        suppressed=True,
    )


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
