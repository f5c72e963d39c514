"""A detection configuration measured on the labelled set: precision and recall for a person,
the cloud calls it would make and their price, without spending on the cloud unless asked.

A chain's local model runs on every labelled image; a frame it would send to the cloud is
answered by the cloud answer recorded with the image (when that backend decided the event),
else by the cloud itself only when asked (through a throwaway budget), else it stays
undecided. Each evaluation is kept, by the fingerprint of the detection settings, in
``<data root>/detection-evaluations.json`` (the newest few), for ``check-config``."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

from snapshot_processor.detection.base import Detection, DetectionError, Detector
from snapshot_processor.detection.budget import BudgetError, DailyBudget
from snapshot_processor.detection.cascade import UNCHARGED, Cascade, person_confidence
from snapshot_processor.detection.labelled import Labelled
from snapshot_processor.detection.registry import BUDGET_FILE, CLOUD, make_detector
from snapshot_processor.detection.settings import DetectionSettings
from snapshot_processor.storage.files import write_atomically

log = logging.getLogger(__name__)

EVALUATIONS_FILE: Final = "detection-evaluations.json"
KEEP: Final = 20
# Settings that change no answer of the detector (the guard, the drawing, the labelled set's
# bound, money) and the switch itself: left out of the fingerprint.
NOT_ANSWERS: Final = frozenset(
    {
        "enabled",
        "labelled_max",
        "dedupe_seconds",
        "max_per_hour",
        "max_per_day",
        "annotate",
        "daily_budget",
        "price_per_image",
    }
)


class EvaluationError(Exception):
    """The evaluations file cannot be read or written."""


def fingerprint(settings: DetectionSettings) -> str:
    """What identifies a detection configuration: a hash of the settings that shape its
    answers (backend, thresholds, model, labels, chain bounds), and of the model and labels
    files' size and time, so a file replaced in place is another configuration."""
    values = {k: v for k, v in settings.model_dump(mode="json").items() if k not in NOT_ANSWERS}
    for name, path in (
        ("model_file", settings.onnx_model_path),
        ("labels", settings.onnx_labels_file),
    ):
        if path is not None:
            try:
                found = path.stat()
                values[name] = [found.st_size, found.st_mtime_ns]
            except OSError:
                values[name] = None
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def as_running(settings: DetectionSettings) -> DetectionSettings:
    """The settings with detection on: a configuration is measured as it would run."""
    return settings if settings.enabled else settings.model_copy(update={"enabled": True})


@dataclass(frozen=True)
class Evaluation:
    """One configuration on the labelled set. ``decided`` images count in precision and
    recall; ``undecided`` are frames the cloud would have answered, with no answer here;
    ``failed`` could not be read or analysed. ``cloud_calls`` counts every frame the
    configuration would send to the cloud, ``cloud_recorded`` those answered from the
    recorded answer, ``cloud_asked`` those sent to it now."""

    fingerprint: str
    backend: str
    at: float
    images: int
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    undecided: int
    failed: int
    cloud_calls: int
    cloud_recorded: int
    cloud_asked: int
    price_per_image: float
    name: str = "running"

    @property
    def decided(self) -> int:
        return (
            self.true_positives + self.false_positives + self.false_negatives + self.true_negatives
        )

    @property
    def precision(self) -> float | None:
        """Of the images said to show a person, the share that do (None: none said so)."""
        said = self.true_positives + self.false_positives
        return self.true_positives / said if said else None

    @property
    def recall(self) -> float | None:
        """Of the images that show a person, the share found (None: none does)."""
        persons = self.true_positives + self.false_negatives
        return self.true_positives / persons if persons else None

    @property
    def cloud_per_image(self) -> float | None:
        return self.cloud_calls / self.images if self.images else None

    @property
    def cloud_cost(self) -> float:
        return self.cloud_calls * self.price_per_image

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Evaluation:
        names = {field.name for field in fields(cls)}
        return cls(**{key: item for key, item in value.items() if key in names})


def worse(mine: Evaluation, other: Evaluation) -> bool:
    """``mine`` has a lower precision or a lower recall than ``other`` (where both have one),
    both measured on a labelled set of the same size (a grown set is another measure)."""
    if mine.images != other.images:
        return False
    return any(
        a is not None and b is not None and a < b
        for a, b in ((mine.precision, other.precision), (mine.recall, other.recall))
    )


class _Answers:
    """What a configuration answers for one labelled image, the cloud spared if it can be."""

    def __init__(self, detector: Detector, budget: DailyBudget | None) -> None:
        self.detector = detector
        self.budget = budget
        self.cloud_calls = self.cloud_recorded = self.cloud_asked = 0
        if isinstance(detector, Cascade):
            self.cloud: Detector | None = detector.cloud
        elif detector.name in CLOUD:
            self.cloud = detector
        else:
            self.cloud = None

    def person(self, entry: Labelled, image: bytes) -> bool | None:
        """Whether the configuration says a person is in ``image``; None: undecided.
        Raises :class:`DetectionError` when the local model fails."""
        detector = self.detector
        if isinstance(detector, Cascade):
            found = detector.local.detect(image)
            confidence = person_confidence(found)
            if confidence >= detector.sure or confidence < detector.clear:
                return _says_person(d for d in found if d.confidence >= detector.min_confidence)
            return self._from_cloud(entry, image)
        if self.cloud is not None:
            return self._from_cloud(entry, image)
        return _says_person(detector.detect(image))

    def _from_cloud(self, entry: Labelled, image: bytes) -> bool | None:
        self.cloud_calls += 1
        assert self.cloud is not None
        if entry.decided_by == self.cloud.name:
            self.cloud_recorded += 1
            return any(bool(item.get("person")) for item in entry.detections)
        if self.budget is None:
            return None
        try:
            ticket = self.budget.reserve()
            if ticket is None:
                return None  # today's budget is spent: DETECTION_DAILY_BUDGET
        except BudgetError as exc:
            log.warning("detection evaluate: %s; the cloud is not asked", exc)
            return None
        try:
            answer = self.cloud.detect(image)
        except DetectionError as exc:
            if exc.reason in UNCHARGED:
                self.budget.refund(ticket)
            log.warning(
                "detection evaluate: %s failed on %s: %s", self.cloud.name, entry.event_id, exc
            )
            return None
        self.cloud_asked += 1
        return _says_person(answer)


def _says_person(detections: Iterable[Detection]) -> bool:
    return any(detection.person for detection in detections)


def evaluate(
    settings: DetectionSettings,
    entries: Sequence[Labelled],
    *,
    ask_cloud: bool = False,
    data_root: Path | None = None,
    name: str = "running",
    clock: Callable[[], float] = time.time,
) -> Evaluation:
    """Replay ``entries`` through the configuration ``settings`` (as if detection were on).
    Raises what :func:`make_detector` raises when the configuration cannot be built."""
    settings = as_running(settings)
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "undecided": 0, "failed": 0}
    # The cloud is asked (with --cloud) under the daemon's own daily budget, in its file:
    # what an evaluation spends counts against the day, and the day's bound holds.
    with tempfile.TemporaryDirectory(prefix="detection-evaluate-") as scratch:
        if ask_cloud and data_root is None:
            raise ValueError("asking the cloud needs the data root, where its budget is kept")
        root = data_root if ask_cloud and data_root is not None else Path(scratch)
        detector = make_detector(settings, root)
        budget: DailyBudget | None = None
        try:
            if ask_cloud:
                budget = (
                    detector.budget
                    if isinstance(detector, Cascade)
                    else DailyBudget(
                        root / BUDGET_FILE,
                        settings.daily_budget,
                        settings.price_per_image,
                    )
                )
            answers = _Answers(detector, budget)
            for entry in entries:
                try:
                    image = entry.path.read_bytes()
                    said = answers.person(entry, image)
                except (OSError, DetectionError) as exc:
                    counts["failed"] += 1
                    log.warning("detection evaluate: event %s skipped: %s", entry.event_id, exc)
                    continue
                if said is None:
                    counts["undecided"] += 1
                else:
                    key = (
                        ("tp" if entry.person else "fp")
                        if said
                        else ("fn" if entry.person else "tn")
                    )
                    counts[key] += 1
        finally:
            if budget is not None and not isinstance(detector, Cascade):
                budget.close()
            detector.close()
    return Evaluation(
        fingerprint=fingerprint(settings),
        backend=settings.backend,
        at=clock(),
        images=len(entries),
        true_positives=counts["tp"],
        false_positives=counts["fp"],
        false_negatives=counts["fn"],
        true_negatives=counts["tn"],
        undecided=counts["undecided"],
        failed=counts["failed"],
        cloud_calls=answers.cloud_calls,
        cloud_recorded=answers.cloud_recorded,
        cloud_asked=answers.cloud_asked,
        price_per_image=settings.price_per_image,
        name=name,
    )


# --- the evaluations kept ---------------------------------------------------------------
def evaluations_path(data_root: Path) -> Path:
    return data_root / EVALUATIONS_FILE


def stored(data_root: Path) -> list[Evaluation]:
    """The evaluations kept, the oldest first (none when there is no file).
    Raises :class:`EvaluationError` for a file that cannot be read."""
    path = evaluations_path(data_root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise EvaluationError(f"{path}: {exc.strerror or exc}") from None
    try:
        found = json.loads(text)
        return [Evaluation.from_json(item) for item in found["evaluations"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise EvaluationError(f"{path} is not an evaluations file: {exc}") from None


def store(data_root: Path, *evaluations: Evaluation) -> None:
    """Add ``evaluations`` to those kept (the newest :data:`KEEP`); durable on return.
    Raises :class:`EvaluationError`."""
    path = evaluations_path(data_root)
    try:
        kept = stored(data_root)
    except EvaluationError as exc:
        log.warning("detection evaluations: %s; started over", exc)
        kept = []
    kept = [*kept, *evaluations][-KEEP:]
    body = {"evaluations": [evaluation.as_json() for evaluation in kept]}
    try:
        write_atomically(path, (json.dumps(body, indent=1) + "\n").encode())
    except OSError as exc:
        raise EvaluationError(f"{path} cannot be written: {exc.strerror or exc}") from None


def compared(
    evaluations: Sequence[Evaluation], current: str
) -> tuple[Evaluation | None, Evaluation | None]:
    """The newest evaluation of the configuration ``current`` (a fingerprint) and the
    newest of any other configuration."""
    mine = next((e for e in reversed(evaluations) if e.fingerprint == current), None)
    other = next((e for e in reversed(evaluations) if e.fingerprint != current), None)
    return mine, other
