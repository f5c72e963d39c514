"""The detection settings section: which backend, its thresholds, and the cost guard."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pylib.config.settings import CommaList, one_of
from snapshot_processor.detection.registry import BACKENDS


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
    dedupe_seconds: float = Field(60.0, alias="DETECTION_DEDUPE_SECONDS", ge=0)
    max_per_hour: int | None = Field(None, alias="DETECTION_MAX_PER_HOUR", ge=0)
    max_per_day: int | None = Field(None, alias="DETECTION_MAX_PER_DAY", ge=0)
    annotate: bool = Field(True, alias="DETECTION_ANNOTATE")

    @field_validator("configured_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return one_of(value, BACKENDS)

    @model_validator(mode="after")
    def _consistent(self) -> DetectionSettings:
        problems = []
        if self.backend == "onnx" and self.onnx_model_path is None:
            problems.append("OBJECT_DETECTION_BACKEND is onnx, so ONNX_MODEL_PATH is needed")
        if self.onnx_model_path is not None and not self.onnx_model_path.is_file():
            problems.append(f"ONNX_MODEL_PATH: no such file {self.onnx_model_path}")
        if self.backend == "rekognition" and not self.aws_region:
            problems.append("Rekognition needs AWS_ALT_REGION or AWS_DEFAULT_REGION")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def backend(self) -> str:
        """The backend in use: ``none`` unless OBJECT_DETECTION_ENABLED."""
        return self.configured_backend if self.enabled else "none"

    @property
    def aws_region(self) -> str | None:
        """Rekognition's region: AWS_ALT_REGION, else AWS_DEFAULT_REGION."""
        return self.aws_alt_region or self.aws_default_region
