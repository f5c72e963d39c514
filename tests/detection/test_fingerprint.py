"""An evaluation's fingerprint: the settings that shape detection's answers, and the model
file itself, so a model replaced in place is measured as another configuration."""

from __future__ import annotations

from pathlib import Path

from snapshot_processor import config
from snapshot_processor.detection.evaluate import fingerprint
from snapshot_processor.detection.settings import DetectionSettings


def detection(tmp_path: Path, **env: str) -> DetectionSettings:
    return config.load(
        env={
            "SECRETS_DIR": str(tmp_path / "none"),
            "OBJECT_DETECTION_BACKEND": "onnx",
            "ONNX_MODEL_PATH": str(tmp_path / "model.onnx"),
            **env,
        }
    ).detection


def test_the_model_file_and_answer_settings_count_and_the_rest_does_not(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"first model")
    first = fingerprint(detection(tmp_path))
    assert fingerprint(detection(tmp_path)) == first
    # Not the answers: the guard, the drawing, money, the switch.
    assert (
        fingerprint(detection(tmp_path, DETECTION_DEDUPE_SECONDS="5", DETECTION_ANNOTATE="false"))
        == first
    )
    assert fingerprint(detection(tmp_path, OBJECT_DETECTION_ENABLED="true")) == first
    # The answers: a threshold, and the model replaced in place under the same name.
    assert fingerprint(detection(tmp_path, DETECTION_MIN_CONFIDENCE="70")) != first
    model.write_bytes(b"a better model, retrained")
    assert fingerprint(detection(tmp_path)) != first
