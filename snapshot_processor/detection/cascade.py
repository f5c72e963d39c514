"""A chain of two backends: the local model decides where it is sure, the cloud one only in
between, and never past the day's budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client import Counter

from pylib.runtime.health import Health
from snapshot_processor.detection.base import PERSON, Detection, DetectionError, Detector
from snapshot_processor.detection.budget import BudgetError, DailyBudget

log = logging.getLogger(__name__)

DETECTION_DECIDED = Counter(
    "detection_decided_total",
    "Images by the backend whose answer stands, and why (in a chain)",
    ["backend", "why"],
)

SURE = "sure"
CLEAR = "clear"
UNSURE = "unsure"
SPENT = "budget spent"
# Failures the service refused before any analysis, so never charged; a timeout or a server
# error may come after the work was done, and stays counted (the bound must hold).
UNCHARGED = frozenset({"throttled", "access_denied", "invalid_image"})


@dataclass(frozen=True)
class Decision:
    """What detection made of one image: whose answer stands and, in a chain, why."""

    detections: Sequence[Detection]
    backend: str
    why: str | None = None
    local_person_confidence: float | None = None


@runtime_checkable
class Decides(Protocol):
    """A backend that says whose answer stands (a chain, a remote worker)."""

    def decide(self, image: bytes) -> Decision: ...


def decide(detector: Detector, image: bytes) -> Decision:
    """A chain's (or a worker's) decision, or a lone backend's answer."""
    if isinstance(detector, Decides):
        return detector.decide(image)
    decision = Decision(detector.detect(image), detector.name)
    DETECTION_DECIDED.labels(detector.name, "alone").inc()
    return decision


def person_confidence(detections: Sequence[Detection]) -> float:
    """The highest confidence (0-100) of a person among ``detections``, 0 if none."""
    return max((d.confidence for d in detections if d.label.casefold() == PERSON), default=0.0)


class Cascade:
    """``local`` first, on every image; ``cloud`` when the local person confidence is at or
    above ``clear`` and below ``sure``, while ``budget`` allows. The local model must report
    what it finds down to ``clear`` (its own threshold at most that); its answer keeps only
    what reaches ``min_confidence``, as a lone backend's would."""

    def __init__(
        self,
        local: Detector,
        cloud: Detector,
        *,
        sure: float,
        clear: float,
        min_confidence: float,
        budget: DailyBudget,
    ) -> None:
        self.local = local
        self.cloud = cloud
        self.sure = sure
        self.clear = clear
        self.min_confidence = min_confidence
        self.budget = budget
        self.name = f"{local.name},{cloud.name}"

    def detect(self, image: bytes) -> list[Detection]:
        return list(self.decide(image).detections)

    def decide(self, image: bytes) -> Decision:
        """Raises :class:`DetectionError` only when the local model fails."""
        found = self.local.detect(image)
        person = person_confidence(found)
        kept = [d for d in found if d.confidence >= self.min_confidence]
        local = self.local.name
        if person >= self.sure or person < self.clear:
            why = SURE if person >= self.sure else CLEAR
            return self._decided(Decision(kept, local, why, person))
        try:
            ticket = self.budget.reserve()
        except BudgetError as exc:
            log.warning("detection: %s; the local answer stands", exc)
            return self._decided(Decision(kept, local, "budget unknown", person))
        if ticket is None:
            return self._decided(Decision(kept, local, SPENT, person))
        try:
            answer = self.cloud.detect(image)
        except DetectionError as exc:
            if exc.reason in UNCHARGED:
                self.budget.refund(ticket)
            log.warning("detection: %s failed (%s); the local answer stands", self.cloud.name, exc)
            return self._decided(Decision(kept, local, f"cloud failed: {exc.reason}", person))
        return self._decided(Decision(answer, self.cloud.name, UNSURE, person))

    @staticmethod
    def _decided(decision: Decision) -> Decision:
        DETECTION_DECIDED.labels(decision.backend, decision.why or "alone").inc()
        return decision

    def close(self) -> None:
        try:
            self.local.close()
        finally:
            try:
                self.cloud.close()
            finally:
                self.budget.close()

    def health(self) -> Health:
        """Both backends', and the budget: spent is a warning (the local model decides)."""
        whole = Health.combine([self.local.health(), self.cloud.health()])
        try:
            today = self.budget.today()
        except BudgetError as exc:
            whole.warnings.append(str(exc))
            return whole
        limit = self.budget.limit
        whole.detail.setdefault("detection", {})["budget"] = {
            "day": today.day,
            "cloud_calls": today.calls,
            "spent": round(today.money, 6),
            "limit": limit,
            "price_per_image": self.budget.price,
        }
        if self.budget.spent_out(today):
            whole.warnings.append(
                f"detection: today's budget of {limit:g} is spent ({today.calls} cloud calls); "
                f"the local model decides alone until 00:00 UTC"
            )
        return whole
