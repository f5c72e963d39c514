"""The ONNX backend's formats, class names, load-time checks and port, on tiny models the
tests build (most ignore the pixels and answer constants, so the boxes are known)."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pylib.runtime.health import Health
from snapshot_processor.detection.base import Box, DetectionError, Detector
from snapshot_processor.detection.onnx import OnnxDetector, from_settings
from snapshot_processor.detection.onnx_formats import (
    COCO_LABELS,
    FORMATS,
    PREPS,
    TF_COCO_LABELS,
    InputSpec,
    guess_format,
    labels_from_metadata,
    place,
    read_labels_file,
    to_tensor,
    yolox_cells,
)
from snapshot_processor.detection.settings import ONNX_FORMATS, DetectionSettings

pytestmark = pytest.mark.local_extra

Floats = npt.NDArray[np.float32]


def jpeg(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def solid(width: int, height: int, rgb: tuple[int, int, int] = (90, 90, 90)) -> bytes:
    return jpeg(np.full((height, width, 3), rgb, dtype=np.uint8))


def save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constants(
    path: Path,
    outputs: dict[str, npt.NDArray[np.generic]],
    *,
    input_shape: list[int | str] | None = None,
    input_type: int = TensorProto.FLOAT,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A model that ignores its input and answers ``outputs``, in that order."""
    nodes = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
        for name, value in outputs.items()
    ]
    graph = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("images", input_type, input_shape or [1, 3, 64, 64])],
        [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
            )
            for name, value in outputs.items()
        ],
    )
    return save(graph, path, metadata)


def near(box: Box | None, expected: Box) -> bool:
    """The box within float32's precision of ``expected``."""
    assert box is not None
    return box.as_dict() == pytest.approx(expected.as_dict(), abs=1e-6)


def floats(rows: object) -> Floats:
    return np.asarray(rows, dtype=np.float32)


# --- YOLOX ------------------------------------------------------------------------------


def yolox_rows() -> Floats:
    """Raw YOLOX rows for a 64x64 input (8x8 + 4x4 + 2x2 = 84 cells) with 2 classes."""
    rows = np.zeros((yolox_cells(64, 64), 7), dtype=np.float32)
    # Stride 8, cell (3, 1) = row 1*8+3: centre (28, 12), 16x16 -> a person 0.9 * 0.9.
    rows[11] = [0.5, 0.5, math.log(2), math.log(2), 0.9, 0.9, 0.1]
    # The same person at 0.6: suppressed by the first.
    rows[12] = [-0.5, 0.5, math.log(2), math.log(2), 0.6, 1.0, 0.0]
    # Stride 16, cell (2, 0) = row 64+2: centre (32, 8), 8x8 -> a car 0.8 * 0.9.
    rows[66] = [0.0, 0.5, math.log(0.5), math.log(0.5), 0.8, 0.1, 0.9]
    # Stride 32, cell (1, 1) = row 64+16+3: under the threshold (0.3).
    rows[83] = [0.5, 0.5, 0.0, 0.0, 0.3, 1.0, 0.0]
    return rows


def test_yolox_raw_grid_output(tmp_path: Path) -> None:
    model = constants(tmp_path / "yolox.onnx", {"output": yolox_rows()[np.newaxis]})
    detector = OnnxDetector(model, labels=["person", "car"])
    assert detector.format == "yolox"
    # 128x64 into 64x64 at the top left: scale 0.5, no offset (YOLOX pads right and below).
    found = detector.detect(solid(128, 64))
    assert [(d.label, d.person) for d in found] == [("person", True), ("car", False)]
    person, car = found
    assert person.confidence == pytest.approx(81.0, abs=0.01)
    assert near(person.box, Box(40 / 128, 8 / 64, 32 / 128, 32 / 64))
    assert car.confidence == pytest.approx(72.0, abs=0.01)
    assert near(car.box, Box(56 / 128, 8 / 64, 16 / 128, 16 / 64))


def test_yolox_input_is_bgr_0_to_255_padded_at_the_top_left() -> None:
    frame = np.zeros((32, 64, 3), dtype=np.uint8)
    frame[:, :] = (10, 20, 200)  # BGR, as OpenCV decodes
    spec = InputSpec(channels_last=False, dtype=np.float32, height=64, width=64)
    canvas, placed = place(frame, PREPS["yolox"], 64, 64)
    tensor = to_tensor(canvas, PREPS["yolox"], spec)
    assert tensor.shape == (1, 3, 64, 64)
    assert tensor.dtype == np.float32
    assert (placed.left, placed.top, placed.scale_x) == (0, 0, 1.0)
    assert tensor[0, :, 0, 0].tolist() == [10.0, 20.0, 200.0]  # B, G, R; not scaled
    assert tensor[0, :, 40, 0].tolist() == [114.0, 114.0, 114.0]  # padding below
    # Ultralytics' letterbox: RGB in 0..1, centred.
    canvas, placed = place(frame, PREPS["yolov8"], 64, 64)
    tensor = to_tensor(canvas, PREPS["yolov8"], spec)
    assert placed.top == 16
    assert tensor[0, :, 16, 0].tolist() == pytest.approx([200 / 255, 20 / 255, 10 / 255])
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([114 / 255] * 3)


# --- YOLOv8 family ----------------------------------------------------------------------

# Columns [cx, cy, w, h, person, car] in pixels of the 64x64 input.
V8 = [
    [32, 32, 16, 24, 0.85, 0.05],
    [8, 24, 8, 8, 0.1, 0.72],
    [50, 40, 8, 8, 0.3, 0.1],  # under the threshold
]


@pytest.mark.parametrize("name", ["auto", "yolov8", "yolov9", "yolo11"])
def test_yolov9_and_yolo11_read_as_yolov8(tmp_path: Path, name: str) -> None:
    model = constants(tmp_path / "v8.onnx", {"output0": floats(V8).T[np.newaxis].copy()})
    detector = OnnxDetector(model, labels=["person", "car"], output_format=name)
    assert detector.format == ("yolov8" if name == "auto" else name)
    found = detector.detect(solid(128, 64))
    assert [(d.label, round(d.confidence, 2)) for d in found] == [("person", 85.0), ("car", 72.0)]
    # Centred letterbox: 16 px above and below.
    assert near(found[0].box, Box(0.375, 0.125, 0.25, 0.75))


# --- SSD --------------------------------------------------------------------------------

SSD_BOXES = floats(
    [
        [
            [0.1, 0.2, 0.5, 0.4],  # [ymin, xmin, ymax, xmax]: a person, 0.9
            [0.12, 0.21, 0.5, 0.4],  # a second person, overlapping: kept (NMS is done)
            [0.6, 0.6, 0.9, 0.95],  # a car, 0.7
            [0.0, 0.0, 1.0, 1.0],  # past num_detections: ignored
        ]
    ]
)
SSD_SCORES = floats([[0.9, 0.8, 0.7, 0.99]])
SSD_CLASSES = floats([[1.0, 1.0, 3.0, 1.0]])  # TensorFlow's COCO ids: 1 person, 3 car
SSD_COUNT = floats([3.0])


def check_ssd(detector: OnnxDetector) -> None:
    assert detector.format == "ssd"
    found = detector.detect(solid(200, 100))
    assert [(d.label, d.person, round(d.confidence, 2)) for d in found] == [
        ("person", True, 90.0),
        ("person", True, 80.0),
        ("car", False, 70.0),
    ]
    assert near(found[0].box, Box(0.2, 0.1, 0.2, 0.4))
    assert near(found[2].box, Box(0.6, 0.6, 0.35, 0.3))


def test_ssd_outputs_by_name_with_a_uint8_input_of_any_size(tmp_path: Path) -> None:
    # As the ONNX model zoo's ssd_mobilenet_v1: uint8 NHWC, names with ":0", count first.
    model = constants(
        tmp_path / "ssd.onnx",
        {
            "num_detections:0": SSD_COUNT,
            "detection_boxes:0": SSD_BOXES,
            "detection_scores:0": SSD_SCORES,
            "detection_classes:0": SSD_CLASSES,
        },
        input_shape=[1, "height", "width", 3],
        input_type=TensorProto.UINT8,
    )
    detector = OnnxDetector(model)  # no labels: TensorFlow's COCO ids
    assert detector.labels == TF_COCO_LABELS
    check_ssd(detector)


def test_ssd_outputs_by_shape_with_a_fixed_float_input(tmp_path: Path) -> None:
    model = constants(
        tmp_path / "ssd.onnx",
        {"a": SSD_BOXES, "b": SSD_SCORES, "c": SSD_CLASSES, "d": SSD_COUNT},
        input_shape=[1, 3, 300, 300],
    )
    check_ssd(OnnxDetector(model, output_format="ssd"))


def test_ssd_gets_rgb_uint8_pixels(tmp_path: Path) -> None:
    """The score is the mean of channel 0 of a uint8 NHWC input, over 255: red for RGB."""
    inits = [
        numpy_helper.from_array(np.asarray([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "end"),
        numpy_helper.from_array(np.asarray([3], dtype=np.int64), "axis"),
        numpy_helper.from_array(np.asarray(255.0, dtype=np.float32), "full"),
        numpy_helper.from_array(np.asarray([1, 1], dtype=np.int64), "shape"),
        numpy_helper.from_array(floats([[[0.0, 0.0, 1.0, 1.0]]]), "box_value"),
        numpy_helper.from_array(floats([[1.0]]), "class_value"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image_tensor"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Slice", ["pixels", "start", "end", "axis"], ["first"]),
            helper.make_node("ReduceMean", ["first"], ["mean"], keepdims=0),
            helper.make_node("Div", ["mean", "full"], ["fraction"]),
            helper.make_node("Reshape", ["fraction", "shape"], ["detection_scores"]),
            helper.make_node("Identity", ["box_value"], ["detection_boxes"]),
            helper.make_node("Identity", ["class_value"], ["detection_classes"]),
        ],
        "ssd-red",
        [helper.make_tensor_value_info("image_tensor", TensorProto.UINT8, [1, None, None, 3])],
        [
            helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, 1, 4]),
            helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("detection_classes", TensorProto.FLOAT, [1, 1]),
        ],
        initializer=inits,
    )
    model = save(graph, tmp_path / "red.onnx")
    detector = OnnxDetector(model, output_format="ssd", score_threshold=0.05)
    (red,) = detector.detect(solid(50, 30, (255, 0, 0)))
    assert red.label == "person"
    assert red.confidence > 95
    assert near(red.box, Box(0.0, 0.0, 1.0, 1.0))
    assert detector.detect(solid(50, 30, (0, 0, 255))) == []


def test_tensorflow_coco_ids_have_their_gaps() -> None:
    assert len(TF_COCO_LABELS) == 91
    assert (TF_COCO_LABELS[1], TF_COCO_LABELS[3], TF_COCO_LABELS[90]) == (
        "person",
        "car",
        "toothbrush",
    )
    assert (TF_COCO_LABELS[12], TF_COCO_LABELS[13]) == ("class_12", "stop sign")
    assert [n for n in TF_COCO_LABELS if not n.startswith("class_")][1:] == list(COCO_LABELS)


# --- telling the format -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        ([(1, 25200, 85)], "yolov5"),
        ([(1, 84, 8400)], "yolov8"),
        ([(1, 8400, 85)], "yolox"),
        ([(1, 8400, 6)], "yolox"),  # one class
        ([(1, 25200, 6)], "yolov5"),
        ([(1, 5, 8400)], "yolov8"),  # one class, labels unknown
        ([(1, 100, 4), (1, 100), (1, 100), (1,)], "ssd"),
        ([(1, 8400, 10)], "yolox"),  # five classes, labels unknown
        ([(1, 25200, 10)], "yolov5"),
        ([(1, 9, 8400)], "yolov8"),
        ([(1, 25500, 85)], "yolov5"),  # a P6 model (strides 8 to 64)
        ([(1, 116, 8400), (1, 32, 160, 160)], None),  # segmentation
        ([(1, 300, 6)], None),  # boxes already suppressed (an export with NMS)
        ([(1, 100, 4), (1, 100)], None),
        ([(1, 7)], None),
        ([(1, 3, 2)], None),
        ([(2, 84, 8400)], None),
    ],
)
def test_format_by_shape(shapes: list[tuple[int, ...]], expected: str | None) -> None:
    outputs = [np.zeros(s, dtype=np.float32) for s in shapes]
    names = [f"out{i}" for i in range(len(shapes))]
    assert guess_format(names, outputs, 80, 640, 640) == expected


def test_auto_on_tiny_models(tmp_path: Path) -> None:
    v5 = constants(tmp_path / "v5.onnx", {"output0": np.zeros((1, 252, 85), np.float32)})
    yolox = constants(tmp_path / "x.onnx", {"output": np.zeros((1, 84, 85), np.float32)})
    v8 = constants(tmp_path / "v8.onnx", {"output0": np.zeros((1, 84, 84), np.float32)})
    assert [OnnxDetector(m).format for m in (v5, yolox, v8)] == ["yolov5", "yolox", "yolov8"]


def test_the_choice_is_logged_once_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = constants(tmp_path / "x.onnx", {"output": yolox_rows()[np.newaxis]})
    with caplog.at_level(logging.INFO, "snapshot_processor.detection.onnx"):
        detector = OnnxDetector(model, labels=["person", "car"])
        detector.detect(solid(64, 64))
    lines = [r.getMessage() for r in caplog.records if r.name.endswith(".onnx")]
    assert len(lines) == 1
    assert lines[0].startswith("ONNX model x.onnx: yolox output (1, 84, 7), 2 labels")


# --- failing at load, in one line -------------------------------------------------------


def one_line_error(path: Path, output_format: str = "auto") -> str:
    with pytest.raises(ValueError, match="ONNX model") as caught:
        OnnxDetector(path, output_format=output_format)
    text = str(caught.value)
    assert "\n" not in text
    assert str(path) in text
    return text


def test_an_output_of_no_known_format_fails_at_load(tmp_path: Path) -> None:
    model = constants(tmp_path / "odd.onnx", {"output": np.zeros((1, 7), np.float32)})
    text = one_line_error(model)
    assert text.endswith("output (1, 7) fits no known format; set ONNX_OUTPUT_FORMAT")


def test_a_format_that_does_not_fit_fails_at_load(tmp_path: Path) -> None:
    model = constants(tmp_path / "v5.onnx", {"output0": np.zeros((1, 5, 7), np.float32)})
    assert "does not fit ONNX_OUTPUT_FORMAT=yolox (YOLOX at 64x64 answers (1, 84, 5+C))" in (
        one_line_error(model, output_format="yolox")
    )
    assert "ONNX_OUTPUT_FORMAT=ssd" in one_line_error(model, output_format="ssd")


def test_a_broken_model_fails_at_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model\nat all")
    assert "cannot load ONNX model" in one_line_error(junk)
    # It loads, but cannot run: a Reshape to a size that does not fit.
    shape = numpy_helper.from_array(np.asarray([1, 5, 7], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["output"])],
        "broken",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5, 7])],
        initializer=[shape],
    )
    assert "a trial run failed" in one_line_error(save(graph, tmp_path / "broken.onnx"))
    model = constants(tmp_path / "v5.onnx", {"output0": np.zeros((1, 5, 7), np.float32)})
    with pytest.raises(ValueError, match="output_format must be one of"):
        OnnxDetector(model, output_format="yolov99")


# --- class names ------------------------------------------------------------------------

TWO = floats([[32, 32, 16, 24, 0.9, 0.1], [8, 24, 8, 8, 0.1, 0.8]]).T[np.newaxis].copy()


def test_names_from_ultralytics_metadata(tmp_path: Path) -> None:
    metadata = {"names": "{0: 'hund', 1: 'katze'}", "stride": "32"}
    model = constants(tmp_path / "pets.onnx", {"output0": TWO}, metadata=metadata)
    detector = OnnxDetector(model, input_size=64)
    assert detector.labels == ("hund", "katze")
    assert [d.label for d in detector.detect(solid(64, 64))] == ["hund", "katze"]


def test_the_settings_and_the_file_come_before_the_metadata(tmp_path: Path) -> None:
    metadata = {"names": "{0: 'hund', 1: 'katze'}"}
    model = constants(tmp_path / "pets.onnx", {"output0": TWO}, metadata=metadata)
    names = tmp_path / "labels.txt"
    names.write_text("# our classes\nperson\n\n  car  \n# end\n", encoding="utf-8")
    assert OnnxDetector(model, labels_file=names).labels == ("person", "car")
    assert OnnxDetector(model, labels=["a", "b"], labels_file=names).labels == ("a", "b")


def test_metadata_is_never_evaluated() -> None:
    for text in ("__import__('os').system('false')", "{0: print}", "[1, 2]", "{'a': 'b'}"):
        assert labels_from_metadata({"names": text}) is None
    assert labels_from_metadata({}) is None
    assert labels_from_metadata({"names": "['x', 'y']"}) == ("x", "y")
    assert labels_from_metadata({"names": "{0: 'x', 2: 'z'}"}) == ("x", "class_1", "z")


def test_bad_metadata_falls_back_to_coco(tmp_path: Path) -> None:
    model = constants(tmp_path / "bad.onnx", {"output0": TWO}, metadata={"names": "{0: open('x')}"})
    assert OnnxDetector(model, output_format="yolov8").labels == COCO_LABELS


def test_labels_file_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.txt: names no class"):
        read_labels_file(empty)
    with pytest.raises(ValueError, match=r"absent\.txt: cannot read it"):
        read_labels_file(tmp_path / "absent.txt")


def test_from_settings(tmp_path: Path) -> None:
    model = constants(tmp_path / "v8.onnx", {"output0": TWO})
    names = tmp_path / "labels.txt"
    names.write_text("person\ncar\n", encoding="utf-8")
    settings = DetectionSettings.model_validate(
        {
            "ONNX_MODEL_PATH": str(model),
            "ONNX_LABELS_FILE": str(names),
            "ONNX_OUTPUT_FORMAT": "yolo11",
            "DETECTION_MIN_CONFIDENCE": 60,
        }
    )
    detector = from_settings(settings)
    assert (detector.format, detector.labels, detector.score_threshold) == (
        "yolo11",
        ("person", "car"),
        0.6,
    )
    assert from_settings(settings, floor=20).score_threshold == pytest.approx(0.2)
    assert ONNX_FORMATS == FORMATS


# --- the port ---------------------------------------------------------------------------


def test_close_and_health(tmp_path: Path) -> None:
    model = constants(tmp_path / "v8.onnx", {"output0": TWO})
    detector: Detector = OnnxDetector(model, labels=["person", "car"])
    health = detector.health()
    assert isinstance(health, Health)
    assert health.ok
    assert not health.warnings
    assert health.detail == {
        "detection": {
            "onnx": {
                "model": "v8.onnx",
                "format": "yolov8",
                "output": "(1, 6, 2)",
                "labels": 2,
                "input": "64x64",
            }
        }
    }
    detector.close()
    detector.close()  # twice is harmless
    assert detector.health().ok
    with pytest.raises(DetectionError) as caught:
        detector.detect(solid(64, 64))
    assert caught.value.reason == "error"


# --- the benchmark's synthetic models ---------------------------------------------------


def test_detection_bench_times_every_format() -> None:
    from tools.detection_bench import run_models

    figures = run_models(1)
    assert set(figures) == {"hog", "yolov5", "yolov8", "yolox", "ssd"}
    assert all(values["p50_ms"] > 0 for values in figures.values())
