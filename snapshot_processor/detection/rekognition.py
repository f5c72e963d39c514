"""Amazon Rekognition DetectLabels as a detector, configured the standard boto3 way; failure
messages come from the error code and the service's own words, never a request."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

# boto3 and botocore ship no type information and pyproject.toml is not ours to extend.
import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from pylib.runtime.health import Health
from snapshot_processor.detection.base import Box, Detection, DetectionError, PersonRule

if TYPE_CHECKING:
    from snapshot_processor.detection.settings import DetectionSettings

_INVALID_IMAGE = frozenset(
    {"InvalidImageFormatException", "ImageTooLargeException", "InvalidParameterException"}
)
_THROTTLED = frozenset(
    {"ThrottlingException", "ProvisionedThroughputExceededException", "LimitExceededException"}
)
_ACCESS_DENIED = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "ExpiredToken",
        "RequestExpired",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationTokenException",
    }
)
_NO_CREDENTIALS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
)
_UNREACHABLE = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
)


class RekognitionDetector:
    """Labels from Rekognition DetectLabels; ``Person`` (or a child of it) is a person.
    Timeouts are in seconds; ``max_attempts`` counts the first call."""

    name = "rekognition"

    def __init__(
        self,
        region: str | None,
        min_confidence: float = 55,
        max_labels: int = 20,
        person_min_confidence: float = 80,
        endpoint_url: str | None = None,
        *,
        person_overrides: Mapping[str, float] | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_attempts: int = 2,
    ) -> None:
        self.min_confidence = float(min_confidence)
        self.max_labels = int(max_labels)
        self.rule = PersonRule(float(person_min_confidence), dict(person_overrides or {}))
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max(1, max_attempts), "mode": "standard"},
        )
        # A session of our own: boto3's default session is not safe to share across threads.
        session = boto3.session.Session()
        try:
            self._client: Any = session.client(
                "rekognition", region_name=region, endpoint_url=endpoint_url, config=config
            )
        except botocore.exceptions.NoRegionError:
            raise ValueError(
                "Rekognition needs a region: set AWS_ALT_REGION or AWS_DEFAULT_REGION"
            ) from None
        self.endpoint = str(self._client.meta.endpoint_url)
        # The last call's failure, while no call since has worked: for health.
        self._trouble: str | None = None

    def detect(self, image: bytes) -> list[Detection]:
        """One call to DetectLabels; a detection per located instance, or per label."""
        if not image:
            raise DetectionError("invalid_image", "empty image")
        failure: DetectionError | None = None
        try:
            reply = self._client.detect_labels(
                Image={"Bytes": image},
                MinConfidence=self.min_confidence,
                MaxLabels=self.max_labels,
            )
        except Exception as exc:
            failure = error_from(exc)
            if failure.reason == "unreachable":
                failure = DetectionError("unreachable", f"{failure.message} at {self.endpoint}")
        if failure is not None:
            self._trouble = str(failure)
            # Raised outside the except block: boto's text rides along nowhere.
            raise failure
        self._trouble = None
        return self.detections(reply)

    def detections(self, reply: Mapping[str, Any]) -> list[Detection]:
        """Turn a DetectLabels reply into detections (public for tests and tools)."""
        found: list[Detection] = []
        for label in reply.get("Labels") or []:
            name = str(label.get("Name") or "")
            if not name:
                continue
            confidence = float(label.get("Confidence") or 0.0)
            parents = [str(p.get("Name") or "") for p in label.get("Parents") or []]
            boxes: list[tuple[Box | None, float]] = [
                (box, float(instance.get("Confidence") or confidence))
                for instance in label.get("Instances") or []
                if (box := _box(instance.get("BoundingBox"))) is not None
            ]
            for box, each in boxes or [(None, confidence)]:
                found.append(Detection(name, each, box, self.rule(name, parents, each)))
        return found

    def close(self) -> None:
        self._client.close()

    def health(self) -> Health:
        """A failing service is a warning: the events still go out, without its labels."""
        trouble = self._trouble
        return Health(warnings=[f"Rekognition: {trouble}"] if trouble else [])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _box(raw: Mapping[str, Any] | None) -> Box | None:
    if not raw:
        return None
    try:
        left, top = float(raw["Left"]), float(raw["Top"])
        width, height = float(raw["Width"]), float(raw["Height"])
    except (KeyError, TypeError, ValueError):
        return None
    # Rekognition may report a box reaching a little past the frame: clip it.
    left, top = min(max(left, 0.0), 1.0), min(max(top, 0.0), 1.0)
    width, height = min(max(width, 0.0), 1.0 - left), min(max(height, 0.0), 1.0 - top)
    return Box(left, top, width, height) if width > 0 and height > 0 else None


def error_from(exc: Exception) -> DetectionError:
    """The :class:`DetectionError` for an exception out of boto3."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "Unknown")
        message = f"{code}: {error.get('Message') or 'no message'}"
        if code in _INVALID_IMAGE:
            return DetectionError("invalid_image", message)
        if code in _THROTTLED:
            return DetectionError("throttled", message)
        if code in _ACCESS_DENIED:
            return DetectionError("access_denied", message)
        return DetectionError("error", message)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return DetectionError("invalid_image", "the image was refused before sending")
    if isinstance(exc, _NO_CREDENTIALS):
        return DetectionError("access_denied", f"no usable AWS credentials ({type(exc).__name__})")
    if isinstance(exc, _UNREACHABLE):
        return DetectionError("unreachable", f"Rekognition unreachable ({type(exc).__name__})")
    return DetectionError("error", f"Rekognition call failed ({type(exc).__name__})")


def from_settings(settings: DetectionSettings, *, budgeted: bool = False) -> RekognitionDetector:
    """Rekognition; ``budgeted`` (in a chain): one attempt per call, as each is paid for and
    a retry after a timeout may be charged twice."""
    return RekognitionDetector(
        settings.aws_region,
        min_confidence=settings.min_confidence,
        max_labels=settings.max_labels,
        person_min_confidence=settings.person_min_confidence,
        max_attempts=1 if budgeted else 2,
    )
