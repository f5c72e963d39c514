"""Time the ONNX backend's formats and the HOG detector: ``python -m tools.detection_bench``.

The ONNX models here are SYNTHETIC, built at run time with ``onnx.helper`` in a temporary
directory: a few strided 3x3 convolutions with random weights (widths 32 to 512, about
4 GFLOPs at 640x640, the order of YOLOv5n / YOLOv8n), ending in an output of each
format's shape. They are not trained: their scores stay under the threshold, so a
figure is the model's compute plus preparing the image and reading its output, not the
suppression of many boxes (a real model's handful of boxes adds little). They tell what
each format's path through the backend costs on this machine, not how well any real
model detects or exactly how fast it runs. Nothing is downloaded.

- ``yolov5``: input ``(1, 3, 640, 640)``, output ``(1, 25200, 85)``.
- ``yolov8``: input ``(1, 3, 640, 640)``, output ``(1, 84, 8400)`` (YOLOv9 / YOLO11 alike).
- ``yolox``: input ``(1, 3, 640, 640)``, output ``(1, 8400, 85)``, raw grid offsets.
- ``ssd``: input uint8 ``(1, H, W, 3)`` of any size, resized inside the graph to 300x300 as
  TensorFlow's SSD MobileNet exports do (so less compute); four outputs, 100 boxes.

The images are scikit-image's photographs (a dev dependency, shipped with it) as 640x480
JPEGs, as a camera would send them; every detector sees the same ones.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

SIZE: Final = 640
WIDTHS: Final = (32, 64, 128, 256, 512)  # strides 2, 4, 8, 16, 32
PHOTOS: Final = ("astronaut", "coffee", "chelsea", "rocket", "camera")
SCORE_BIAS: Final = -8.0  # sigmoid(-8) ~ 0.0003: nothing passes the threshold
FORMATS: Final = ("yolov5", "yolov8", "yolox", "ssd")
CELLS: Final = sum((SIZE // s) ** 2 for s in (8, 16, 32))  # 8400
OUTPUTS: Final = {"yolov5": (1, 3 * CELLS, 85), "yolov8": (1, 84, CELLS), "yolox": (1, CELLS, 85)}


def jpegs(count: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``count`` distinct JPEGs of ``size``: the photographs in turn, mirrored on odd rounds."""
    from PIL import Image
    from skimage import data

    images = []
    for i in range(count):
        pixels = np.asarray(getattr(data, PHOTOS[i % len(PHOTOS)])(), dtype=np.uint8)
        if (i // len(PHOTOS)) % 2:
            pixels = pixels[:, ::-1]
        picture = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
        buffer = io.BytesIO()
        picture.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


class _Graph:
    """Nodes and random weights accumulated for one synthetic model."""

    def __init__(self, seed: int) -> None:
        from onnx import NodeProto, TensorProto

        self.nodes: list[NodeProto] = []
        self.weights: list[TensorProto] = []
        self._rng = np.random.default_rng(seed)
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}{self._count}"

    def constant(self, value: npt.NDArray[np.generic], stem: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.weights.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes: Any) -> str:
        from onnx import helper

        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attributes))
        return out

    def conv(
        self,
        x: str,
        channels_in: int,
        channels_out: int,
        *,
        kernel: int,
        stride: int,
        gain: float = 1.0,
    ) -> str:
        """A convolution with He-initialised random weights (times ``gain``)."""
        scale = gain * np.sqrt(2.0 / (channels_in * kernel * kernel))
        weight = self._rng.normal(0.0, scale, (channels_out, channels_in, kernel, kernel))
        bias = np.zeros(channels_out)
        return self.node(
            "Conv",
            [
                x,
                self.constant(weight.astype(np.float32), "w"),
                self.constant(bias.astype(np.float32), "b"),
            ],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[kernel // 2] * 4,
        )

    def head(self, x: str, channels_in: int, channels_out: int, scores_from: int) -> str:
        """A 1x1 convolution, small weights, channels from ``scores_from`` biased low."""
        weight = self._rng.normal(0.0, 0.01, (channels_out, channels_in, 1, 1))
        bias = np.zeros(channels_out)
        bias[scores_from:] = SCORE_BIAS
        return self.node(
            "Conv",
            [
                x,
                self.constant(weight.astype(np.float32), "w"),
                self.constant(bias.astype(np.float32), "b"),
            ],
            kernel_shape=[1, 1],
        )

    def backbone(self, x: str, pixel_scale: float = 1.0) -> list[tuple[str, int]]:
        """Strided 3x3 convolutions with ReLU; the maps of strides 8, 16 and 32. The first
        layer's weights are divided by ``pixel_scale``: a model fed 0..255 (YOLOX, SSD)
        answers as one fed 0..1 would, as a trained one does."""
        levels, channels = [], 3
        for i, width in enumerate(WIDTHS):
            gain = 1.0 / pixel_scale if i == 0 else 1.0
            x = self.node("Relu", [self.conv(x, channels, width, kernel=3, stride=2, gain=gain)])
            channels = width
            levels.append((x, width))
        return levels[2:]

    def shape(self, *dims: int) -> str:
        return self.constant(np.asarray(dims, dtype=np.int64), "shape")


def _yolo_model(kind: str, path: Path, classes: int = 80) -> Path:
    from onnx import TensorProto, helper

    graph = _Graph(seed=len(kind))
    levels = graph.backbone("images", pixel_scale=255.0 if kind == "yolox" else 1.0)
    parts = []
    for x, channels in levels:
        if kind == "yolov5":  # 3 anchors a cell, rows [cx, cy, w, h, obj, C]
            y = graph.head(x, channels, 3 * (5 + classes), scores_from=0)
            y = graph.node("Reshape", [y, graph.shape(1, 3, 5 + classes, -1)])
            y = graph.node("Transpose", [y], perm=[0, 1, 3, 2])
            parts.append(graph.node("Reshape", [y, graph.shape(1, -1, 5 + classes)]))
        else:
            width = (4 if kind == "yolov8" else 5) + classes
            y = graph.head(x, channels, width, scores_from=4)
            parts.append(graph.node("Reshape", [y, graph.shape(1, width, -1)]))
    joined = graph.node("Concat", parts, axis=1 if kind == "yolov5" else 2)
    if kind == "yolox":
        joined = graph.node("Transpose", [joined], perm=[0, 2, 1])
    graph.nodes.append(helper.make_node("Sigmoid", [joined], ["output0"]))
    body = helper.make_graph(
        graph.nodes,
        f"synthetic-{kind}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(OUTPUTS[kind]))],
        initializer=graph.weights,
    )
    return _save(body, path)


def _ssd_model(path: Path, side: int = 300) -> Path:
    from onnx import TensorProto, helper

    graph = _Graph(seed=3)
    pixels = graph.node("Cast", ["image_tensor:0"], to=TensorProto.FLOAT)
    planar = graph.node("Transpose", [pixels], perm=[0, 3, 1, 2])
    sizes = graph.shape(1, 3, side, side)
    resized = graph.node("Resize", [planar, "", "", sizes], mode="linear")
    x, channels = graph.backbone(resized, pixel_scale=255.0)[-1]
    y = graph.head(x, channels, 6, scores_from=4)
    y = graph.node("Reshape", [y, graph.shape(1, 6, -1)])
    y = graph.node("Sigmoid", [graph.node("Transpose", [y], perm=[0, 2, 1])])
    count = ((side + 31) // 32) ** 2
    split = graph.constant(np.asarray([4, 1, 1], dtype=np.int64), "split")
    graph.nodes.append(
        helper.make_node("Split", [y, split], ["detection_boxes:0", "score3", "unused"], axis=2)
    )
    graph.nodes.append(
        helper.make_node("Reshape", ["score3", graph.shape(1, count)], ["detection_scores:0"])
    )
    classes = graph.constant(np.ones((1, count), dtype=np.float32), "classes")
    graph.nodes.append(helper.make_node("Identity", [classes], ["detection_classes:0"]))
    number = graph.constant(np.asarray([count], dtype=np.float32), "num")
    graph.nodes.append(helper.make_node("Identity", [number], ["num_detections:0"]))
    body = helper.make_graph(
        graph.nodes,
        "synthetic-ssd",
        [helper.make_tensor_value_info("image_tensor:0", TensorProto.UINT8, [1, None, None, 3])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in (
                ("detection_boxes:0", [1, count, 4]),
                ("detection_scores:0", [1, count]),
                ("detection_classes:0", [1, count]),
                ("num_detections:0", [1]),
            )
        ],
        initializer=graph.weights,
    )
    return _save(body, path)


def _save(graph: object, path: Path) -> Path:
    import onnx
    from onnx import helper

    assert isinstance(graph, onnx.GraphProto)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_model(kind: str, directory: Path) -> Path:
    """The synthetic model of format ``kind`` (one of :data:`FORMATS`) in ``directory``."""
    path = directory / f"synthetic-{kind}.onnx"
    return _ssd_model(path) if kind == "ssd" else _yolo_model(kind, path)


def p50_ms(detect: Callable[[bytes], object], images: Sequence[bytes]) -> float:
    """The median time of ``detect`` over ``images`` in ms, after one warm-up call."""
    detect(images[0])
    times = []
    for image in images:
        start = time.perf_counter()
        detect(image)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_models(samples: int) -> dict[str, dict[str, float]]:
    """``{"hog": {"p50_ms": ...}, "yolov5": {...}, "yolov8": {...}, "yolox": {...},
    "ssd": {...}}``: each detector's median ``detect()`` over ``samples`` 640x480 JPEGs,
    the ONNX ones on synthetic models (see the module's docstring)."""
    from snapshot_processor.detection.local import HogPeopleDetector
    from snapshot_processor.detection.onnx import OnnxDetector

    if samples < 1:
        raise ValueError("samples must be at least 1")
    images = jpegs(samples)
    hog = HogPeopleDetector()
    figures = {"hog": {"p50_ms": p50_ms(hog.detect, images)}}
    hog.close()
    with tempfile.TemporaryDirectory(prefix="detection-bench-") as directory:
        for kind in FORMATS:
            detector = OnnxDetector(build_model(kind, Path(directory)), output_format=kind)
            try:
                figures[kind] = {"p50_ms": p50_ms(detector.detect, images)}
            finally:
                detector.close()
    return figures


def main() -> None:
    """Run the benchmark and print one line per detector."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20, help="640x480 JPEGs timed")
    args = parser.parse_args()
    figures = run_models(args.samples)
    print(f"detect() median over {args.samples} 640x480 JPEGs (ONNX models are synthetic)")
    for name, values in figures.items():
        print(f"{name:>8}: {values['p50_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
