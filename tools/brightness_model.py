"""A tiny ONNX model whose person confidence is the image's brightness, for the tests and the
bench of the detection chain: a grey image of value v is a person at v / 255 of certainty.

YOLOv8-shaped output ``(1, 5, 1)``: one centred box, one class (``ONNX_LABELS=person``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image


def brightness_model(path: Path) -> Path:
    """Write the model to ``path`` (its input is 640x640, NCHW, as the backend feeds it)."""
    shape = numpy_helper.from_array(np.array([1, 1, 1], dtype=np.int64), "shape")
    box = numpy_helper.from_array(
        np.array([[[320.0], [320.0], [200.0], [400.0]]], dtype=np.float32), "box"
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            helper.make_node("Reshape", ["mean", "shape"], ["score"]),
            helper.make_node("Concat", ["box", "score"], ["output0"], axis=1),
        ],
        "brightness",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1])],
        initializer=[shape, box],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def grey(value: int, size: tuple[int, int] = (640, 640)) -> bytes:
    """A JPEG of one grey: fills the model's input whole, so its mean is ``value``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()
