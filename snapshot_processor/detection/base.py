"""What every detector shares: the detection record, the port, its error and the person rule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

from pylib.observe.redact import redact
from pylib.runtime.health import Health

PERSON = "person"

#: The reasons a :class:`DetectionError` may carry (also the counters' label values).
REASONS: Final = frozenset({"invalid_image", "throttled", "access_denied", "unreachable", "error"})

_MAX_MESSAGE = 300


@dataclass(frozen=True)
class Box:
    """A bounding box as fractions (0..1) of the image's width and height."""

    left: float
    top: float
    width: float
    height: float

    @classmethod
    def from_pixels(
        cls, x1: float, y1: float, x2: float, y2: float, image_width: int, image_height: int
    ) -> Box | None:
        """The box of corners ``(x1, y1)``-``(x2, y2)`` clipped to the image; None if empty."""
        x1, x2 = sorted((_clip(x1, image_width), _clip(x2, image_width)))
        y1, y2 = sorted((_clip(y1, image_height), _clip(y2, image_height)))
        if x2 <= x1 or y2 <= y1:
            return None
        return cls(
            x1 / image_width, y1 / image_height, (x2 - x1) / image_width, (y2 - y1) / image_height
        )

    def as_dict(self) -> dict[str, float]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


def _clip(value: float, limit: int) -> float:
    return min(max(float(value), 0.0), float(limit))


@dataclass(frozen=True)
class Detection:
    """One thing found in an image: ``confidence`` is 0-100, ``box`` None if not located."""

    label: str
    confidence: float
    box: Box | None
    person: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain data for envelopes and events: ``{"label", "confidence", "box", "person"}``."""
        return asdict(self)


class Detector(Protocol):
    """The port every detection backend implements: ``detect`` is called from one thread at
    a time and raises :class:`DetectionError` for every failure it can name; ``close``
    releases what it holds (once, after the last ``detect``); ``health`` says, as every
    other part does, what is wrong now (never a secret)."""

    name: str

    def detect(self, image: bytes) -> list[Detection]:
        """The things found in one JPEG (or other encoded image)."""
        ...

    def close(self) -> None: ...

    def health(self) -> Health: ...


class DetectionError(Exception):
    """Detection failed; ``reason`` is one of :data:`REASONS`, the message has no secret."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            reason = "error"
        text = redact(message)
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 3] + "..."
        super().__init__(f"{reason}: {text}")
        self.reason = reason
        self.message = text


class NoDetector:
    """Backend ``none``: detection switched off; finds nothing, costs nothing."""

    name = "none"

    def detect(self, image: bytes) -> list[Detection]:
        return []

    def close(self) -> None:
        return None

    def health(self) -> Health:
        return Health()


@dataclass(frozen=True)
class PersonRule:
    """Minimum confidence (0-100) at which a person label counts; ``overrides`` maps a
    label (any case) to its own minimum."""

    default: float = 80.0
    overrides: Mapping[str, float] = field(default_factory=dict)

    def minimum(self, label: str) -> float:
        wanted = label.casefold()
        return next((v for n, v in self.overrides.items() if n.casefold() == wanted), self.default)

    def __call__(self, label: str, parents: Iterable[str], confidence: float) -> bool:
        return is_person(label, parents, confidence, self.minimum(label))


def is_person(label: str, parents: Iterable[str], confidence: float, min_confidence: float) -> bool:
    """The person rule: ``Person`` (any case) as the label or a parent, at or above the minimum."""
    if confidence < min_confidence:
        return False
    return label.casefold() == PERSON or any(p.casefold() == PERSON for p in parents)
