"""The local detectors: OpenCV's HOG on real photographs, and ONNX models the tests build."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage import data

from snapshot_processor.detection.base import Box, DetectionError, Detector
from snapshot_processor.detection.local import (
    HogPeopleDetector,
    hog_confidence,
    hog_weight,
    require,
)
from snapshot_processor.detection.onnx import OnnxDetector

pytestmark = pytest.mark.local_extra


def jpeg(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def photo(name: str) -> npt.NDArray[np.uint8]:
    """One of the photographs scikit-image ships (no download)."""
    return np.asarray(getattr(data, name)(), dtype=np.uint8)


def solid(width: int, height: int, value: int) -> bytes:
    return jpeg(np.full((height, width, 3), value, dtype=np.uint8))


# --- HOG ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hog() -> HogPeopleDetector:
    return HogPeopleDetector()


def test_hog_finds_the_astronaut(hog: HogPeopleDetector) -> None:
    found = hog.detect(jpeg(photo("astronaut")))
    assert found, "no person found in skimage's astronaut"
    best = found[0]
    assert (best.label, best.person) == ("Person", True)
    assert best.confidence >= hog.min_confidence
    assert best.box is not None
    # On her: the box's centre lies in the middle of the portrait.
    assert 0.25 < best.box.left + best.box.width / 2 < 0.85
    assert 0.3 < best.box.top + best.box.height / 2 < 0.9


@pytest.mark.parametrize("name", ["coffee", "chelsea", "hubble_deep_field"])
def test_hog_finds_nobody_where_nobody_is(hog: HogPeopleDetector, name: str) -> None:
    # A cup of coffee, a cat, the Hubble deep field (872x1000: also the downscaling path).
    assert hog.detect(jpeg(photo(name))) == []


def test_hog_fits_the_detector_port(hog: HogPeopleDetector) -> None:
    detector: Detector = hog  # checked by mypy
    assert detector.name == "hog"


def test_hog_rejects_what_is_not_an_image(hog: HogPeopleDetector) -> None:
    for bad in (b"", b"not a jpeg at all", solid(64, 64, 0)[:40]):
        with pytest.raises(DetectionError) as caught:
            hog.detect(bad)
        assert caught.value.reason == "invalid_image"


def test_hog_confidence_mapping() -> None:
    assert hog_confidence(0.0) == pytest.approx(50.0)
    assert hog_confidence(1.0) == pytest.approx(88.08, abs=0.01)
    assert hog_confidence(hog_weight(65.0)) == pytest.approx(65.0)


def test_missing_extra_names_the_install_command() -> None:
    with pytest.raises(ImportError, match=r"poetry install -E local") as caught:
        require("no_such_module_for_detection")
    assert "snapshot-processor[local]" in str(caught.value)


# --- ONNX ---------------------------------------------------------------------------


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant_model(path: Path, rows: list[list[float]], *, transpose: bool = False) -> Path:
    """A model that ignores the pixels and always answers ``rows`` (YOLOv5 rows)."""
    output = np.asarray([rows], dtype=np.float32)
    if transpose:  # YOLOv8: (1, 4 + C, N), no objectness column
        output = np.delete(output, 4, axis=2).transpose(0, 2, 1).copy()
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["output"], value=numpy_helper.from_array(output, "value")
            )
        ],
        "constant-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output.shape))],
    )
    return save(graph, path)


def brightness_model(path: Path) -> Path:
    """One person box whose objectness is the image's mean brightness (0..1)."""
    box = numpy_helper.from_array(np.asarray([[[16, 16, 8, 16]]], dtype=np.float32), "box")
    cls = numpy_helper.from_array(np.asarray([[[1.0]]], dtype=np.float32), "cls")
    shape = numpy_helper.from_array(np.asarray([1, 1, 1], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=1),
            helper.make_node("Reshape", ["mean", "shape"], ["objectness"]),
            helper.make_node("Concat", ["box", "objectness", "cls"], ["output"], axis=2),
        ],
        "brightness-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 6])],
        initializer=[box, cls, shape],
    )
    return save(graph, path)


# Rows [cx, cy, w, h, objectness, person, car] in pixels of the 64x64 model input.
ROWS = [
    [32, 32, 16, 24, 0.9, 0.95, 0.05],  # a person: score 0.855
    [33, 32, 16, 24, 0.8, 0.90, 0.10],  # the same person again, weaker: suppressed
    [8, 24, 8, 8, 0.9, 0.10, 0.80],  # a car: 0.72
    [32, 32, 16, 24, 0.6, 0.00, 1.00],  # a car where the person is: another class, kept
    [50, 40, 8, 8, 0.3, 0.90, 0.10],  # under the threshold
]


def check_constant_model(detector: Detector) -> None:
    # 128x64 letterboxed into 64x64: scale 0.5, 16 px of padding above and below.
    found = detector.detect(solid(128, 64, 90))
    assert [(d.label, d.person) for d in found] == [
        ("person", True),
        ("car", False),
        ("car", False),
    ]
    person, car, other_car = found
    assert person.confidence == pytest.approx(85.5, abs=0.01)
    assert car.confidence == pytest.approx(72.0, abs=0.01)
    assert other_car.confidence == pytest.approx(60.0, abs=0.01)
    assert person.box == pytest.approx(Box(0.375, 0.125, 0.25, 0.75))
    assert car.box == pytest.approx(Box(0.0625, 0.125, 0.125, 0.25))
    assert person.as_dict()["box"] == pytest.approx(
        {"left": 0.375, "top": 0.125, "width": 0.25, "height": 0.75}
    )


def test_onnx_yolov5_post_processing(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "v5.onnx", ROWS)
    detector: Detector = OnnxDetector(model, labels=["person", "car"], input_size=64)
    assert detector.name == "onnx"
    check_constant_model(detector)


def test_onnx_yolov8_layout(tmp_path: Path) -> None:
    # Same candidates without objectness: scores are the class scores themselves.
    rows = [[*r[:4], 1.0, r[5] * r[4], r[6] * r[4]] for r in ROWS]
    model = constant_model(tmp_path / "v8.onnx", rows, transpose=True)
    check_constant_model(OnnxDetector(model, labels=["person", "car"], input_size=64))


def test_onnx_default_labels_are_coco(tmp_path: Path) -> None:
    rows = [
        [32, 32, 16, 24, 0.9, 1.0, *([0.0] * 79)],
        [8, 8, 8, 8, 0.9, 0.0, 0.0, 1.0, *([0.0] * 77)],
    ]
    detector = OnnxDetector(constant_model(tmp_path / "coco.onnx", rows), input_size=64)
    found = detector.detect(solid(64, 64, 200))
    assert [(d.label, d.person) for d in found] == [("person", True), ("car", False)]


def test_onnx_threshold_and_person_minimum(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "v5.onnx", ROWS)
    strict = OnnxDetector(
        model, labels=["person", "car"], score_threshold=0.7, person_min_confidence=90
    )
    found = strict.detect(solid(128, 64, 90))
    assert [(d.label, d.person) for d in found] == [("person", False), ("car", False)]


def test_onnx_model_reads_the_pixels(tmp_path: Path) -> None:
    detector = OnnxDetector(brightness_model(tmp_path / "bright.onnx"), labels=["person"])
    assert detector.input_width == detector.input_height == 32  # the model's own size wins
    assert detector.detect(solid(32, 32, 0)) == []
    (person,) = detector.detect(solid(32, 32, 255))
    assert person.person
    assert person.confidence == pytest.approx(100.0, abs=0.5)
    assert person.box == pytest.approx(Box(0.375, 0.25, 0.25, 0.5))


def test_onnx_missing_model_and_bad_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        OnnxDetector(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OnnxDetector(tmp_path / "junk.onnx")
    detector = OnnxDetector(brightness_model(tmp_path / "bright.onnx"), labels=["person"])
    with pytest.raises(DetectionError) as caught:
        detector.detect(b"\x00\x01")
    assert caught.value.reason == "invalid_image"
