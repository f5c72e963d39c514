"""Each camera's triggers take turns: one fetching, the rest waiting behind it in order.

While the camera is *in trouble*, at most ``waiting`` wait: a newer trigger takes the last
place and the one displaced is *coalesced* (acked at once, covered by the newer one's
snapshot or redelivery). Pure bookkeeping, used from the snapshot stage's thread only."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from snapshot_processor.contract.messages import TriggerMessage


@dataclass(frozen=True)
class Offer:
    """What to do with a trigger just offered: start it now and/or settle one as coalesced."""

    start: TriggerMessage | None = None
    coalesced: TriggerMessage | None = None


class TriggerQueues:
    def __init__(self, waiting: int = 3) -> None:
        if waiting < 1:
            raise ValueError(f"waiting must be at least 1, not {waiting}")
        self.waiting = waiting
        self._cameras: dict[str, deque[TriggerMessage]] = {}  # busy cameras' waiting triggers

    def offer(self, trigger: TriggerMessage, *, trouble: bool = True) -> Offer:
        """A trigger came for its camera; ``trouble``: it is in trouble (:meth:`trim` first)."""
        waiting = self._cameras.get(trigger.camera_key)
        if waiting is None:
            self._cameras[trigger.camera_key] = deque()
            return Offer(start=trigger)
        if not trouble or len(waiting) < self.waiting:
            waiting.append(trigger)
            return Offer()
        # The newest waits (its device_params are the newest too) and covers the one displaced.
        displaced = waiting.pop()
        waiting.append(trigger)
        return Offer(coalesced=displaced)

    def trim(self, key: str) -> list[TriggerMessage]:
        """The camera is in trouble: the triggers beyond ``waiting`` (not the newest), coalesced."""
        waiting = self._cameras.get(key)
        if waiting is None or len(waiting) <= self.waiting:
            return []
        kept = list(waiting)
        coalesced = kept[self.waiting - 1 : -1]
        self._cameras[key] = deque([*kept[: self.waiting - 1], kept[-1]])
        return coalesced

    def next(self, key: str) -> TriggerMessage | None:
        """The camera's fetch ended: its next waiting trigger, now started (None: idle)."""
        waiting = self._cameras.get(key)
        if waiting:
            return waiting.popleft()
        self._cameras.pop(key, None)
        return None

    def busy(self, key: str) -> bool:
        """Whether the camera has a trigger being fetched."""
        return key in self._cameras

    def waiting_for(self, key: str) -> int:
        return len(self._cameras.get(key, ()))
