"""The detection settings section: which backend, its thresholds, and the cost guard."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pylib.config.settings import CommaList, one_of
from snapshot_processor.detection.registry import BACKENDS, CLOUD, LOCAL

# The ONNX model's output, or ``auto`` to tell it by its shape (YOLOv9 and YOLO11 as exported
# by Ultralytics have YOLOv8's).
ONNX_FORMATS = ("auto", "yolov5", "yolov8", "yolov9", "yolo11", "yolox", "ssd")
# Amazon Rekognition's published price of DetectLabels, per image, in the first tier (USD).
REKOGNITION_PRICE = 0.001


class DetectionSettings(BaseModel):
    """``OBJECT_DETECTION_*``, ``DETECTION_*``, the AWS region and the ONNX model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, alias="OBJECT_DETECTION_ENABLED")
    configured_backend: str = Field("rekognition", alias="OBJECT_DETECTION_BACKEND")
    aws_default_region: str | None = Field(None, alias="AWS_DEFAULT_REGION")
    aws_alt_region: str | None = Field(None, alias="AWS_ALT_REGION")
    min_confidence: float = Field(55.0, alias="DETECTION_MIN_CONFIDENCE", ge=0, le=100)
    max_labels: int = Field(20, alias="DETECTION_MAX_LABELS", ge=1, le=1000)
    person_min_confidence: float = Field(80.0, alias="PERSON_MIN_CONFIDENCE", ge=0, le=100)
    onnx_model_path: Path | None = Field(None, alias="ONNX_MODEL_PATH")
    onnx_labels: CommaList = Field(default_factory=list, alias="ONNX_LABELS")
    # One class name a line, in the model's order; else the model's metadata, else COCO's.
    onnx_labels_file: Path | None = Field(None, alias="ONNX_LABELS_FILE")
    onnx_format: str = Field("auto", alias="ONNX_OUTPUT_FORMAT")
    # A chain's local model decides alone at or above ``sure`` and below ``clear`` (0-100).
    cascade_sure: float = Field(80.0, alias="DETECTION_CASCADE_SURE", ge=0, le=100)
    cascade_clear: float = Field(20.0, alias="DETECTION_CASCADE_CLEAR", ge=0, le=100)
    # Money a day (UTC) the cloud backend may cost; unset: no bound.
    daily_budget: float | None = Field(None, alias="DETECTION_DAILY_BUDGET", ge=0)
    price_per_image: float = Field(REKOGNITION_PRICE, alias="DETECTION_PRICE_PER_IMAGE", ge=0)
    # Images kept with a person's verdict (``labelled/`` in the data root), oldest out first.
    labelled_max: int = Field(1000, alias="DETECTION_LABELLED_MAX", ge=10, le=100_000)
    dedupe_seconds: float = Field(60.0, alias="DETECTION_DEDUPE_SECONDS", ge=0)
    max_per_hour: int | None = Field(None, alias="DETECTION_MAX_PER_HOUR", ge=0)
    max_per_day: int | None = Field(None, alias="DETECTION_MAX_PER_DAY", ge=0)
    annotate: bool = Field(True, alias="DETECTION_ANNOTATE")
    # Detection by `snapshot-processor detect-worker` processes over RabbitMQ; the backend
    # is then the workers' to choose, and a frame waits at most this long for their answer.
    remote: bool = Field(False, alias="DETECTION_REMOTE")
    remote_timeout: float = Field(10.0, alias="DETECTION_REMOTE_TIMEOUT", gt=0, le=300)

    @field_validator("configured_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        names = [one_of(name.strip(), BACKENDS) for name in value.split(",")]
        if len(names) == 1:
            return names[0]
        if len(names) != 2 or names[0] not in LOCAL or names[1] not in CLOUD:
            raise ValueError(
                "a chain is a local backend, then a cloud one: "
                + " or ".join(f"{local},{cloud}" for local in LOCAL for cloud in CLOUD)
            )
        return ",".join(names)

    @field_validator("onnx_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return one_of(value, ONNX_FORMATS)

    @model_validator(mode="after")
    def _consistent(self) -> DetectionSettings:
        problems = []
        if "onnx" in self.chain and self.onnx_model_path is None and not self.remote:
            problems.append("OBJECT_DETECTION_BACKEND is onnx, so ONNX_MODEL_PATH is needed")
        if self.onnx_model_path is not None and not self.onnx_model_path.is_file():
            problems.append(f"ONNX_MODEL_PATH: no such file {self.onnx_model_path}")
        if self.onnx_labels_file is not None and not self.onnx_labels_file.is_file():
            problems.append(f"ONNX_LABELS_FILE: no such file {self.onnx_labels_file}")
        if self.onnx_labels and self.onnx_labels_file is not None:
            problems.append("ONNX_LABELS and ONNX_LABELS_FILE both name the classes; keep one")
        if self.cascade_clear > self.cascade_sure:
            problems.append(
                f"DETECTION_CASCADE_CLEAR ({self.cascade_clear:g}) is above "
                f"DETECTION_CASCADE_SURE ({self.cascade_sure:g})"
            )
        chained = "," in self.configured_backend  # whether or not detection is on now
        if self.daily_budget is not None and not chained:
            problems.append(
                "DETECTION_DAILY_BUDGET bounds the cloud calls of a chain (onnx,rekognition or "
                "local,rekognition); with one backend, DETECTION_MAX_PER_DAY caps its calls"
            )
        if chained and self.cascade_sure < self.person_min_confidence:
            problems.append(
                f"DETECTION_CASCADE_SURE ({self.cascade_sure:g}) is below "
                f"PERSON_MIN_CONFIDENCE ({self.person_min_confidence:g}): a frame the local "
                "model is sure of would not count as a person, and the cloud would not be asked"
            )
        if "rekognition" in self.chain and not self.aws_region and not self.remote:
            problems.append("Rekognition needs AWS_ALT_REGION or AWS_DEFAULT_REGION")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def backend(self) -> str:
        """The backend in use: ``none`` unless OBJECT_DETECTION_ENABLED."""
        return self.configured_backend if self.enabled else "none"

    @property
    def chain(self) -> tuple[str, ...]:
        """The backends in the order they are asked: one, or a local one then a cloud one."""
        return tuple(self.backend.split(","))

    @property
    def aws_region(self) -> str | None:
        """Rekognition's region: AWS_ALT_REGION, else AWS_DEFAULT_REGION."""
        return self.aws_alt_region or self.aws_default_region


def remote_detection_warnings(settings: DetectionSettings) -> list[str]:
    """DETECTION_REMOTE where it does nothing."""
    if settings.remote and not settings.enabled:
        return [
            "DETECTION_REMOTE is set but OBJECT_DETECTION_ENABLED is not: no frame is sent "
            "to the detection workers"
        ]
    return []
