"""Each camera's triggers take turns: one fetching, the rest waiting behind it in order.

While the camera is *in trouble*, at most ``waiting`` wait: a newer trigger takes the last
place and the one displaced is *coalesced* (acked at once, covered by the newer one's
snapshot or redelivery). Pure bookkeeping, used from the snapshot stage's thread only."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from snapshot_processor.contract.messages import TriggerMessage


@dataclass(frozen=True)
class Offer:
    """What to do with a trigger just offered: start it now and/or settle one as coalesced."""

    start: TriggerMessage | None = None
    coalesced: TriggerMessage | None = None


@dataclass
class _Camera:
    busy: bool = False
    waiting: deque[TriggerMessage] = field(default_factory=deque)


class TriggerQueues:
    """The turns of every camera's triggers; see the module's docstring for the policy."""

    def __init__(self, waiting: int = 3) -> None:
        if waiting < 1:
            raise ValueError(f"waiting must be at least 1, not {waiting}")
        self.waiting = waiting
        self._cameras: dict[str, _Camera] = {}

    def offer(self, trigger: TriggerMessage, *, trouble: bool = True) -> Offer:
        """A trigger came for its camera; ``trouble``: it is in trouble (:meth:`trim` first)."""
        camera = self._cameras.setdefault(trigger.camera_key, _Camera())
        if not camera.busy:
            camera.busy = True
            return Offer(start=trigger)
        if not trouble or len(camera.waiting) < self.waiting:
            camera.waiting.append(trigger)
            return Offer()
        # The newest waits (its device_params are the newest too) and covers the one displaced.
        displaced = camera.waiting.pop()
        camera.waiting.append(trigger)
        return Offer(coalesced=displaced)

    def trim(self, key: str) -> list[TriggerMessage]:
        """The camera is in trouble: the triggers beyond ``waiting`` (not the newest), coalesced."""
        camera = self._cameras.get(key)
        if camera is None or len(camera.waiting) <= self.waiting:
            return []
        kept = list(camera.waiting)
        coalesced = kept[self.waiting - 1 : -1]
        camera.waiting = deque([*kept[: self.waiting - 1], kept[-1]])
        return coalesced

    def next(self, key: str) -> TriggerMessage | None:
        """The camera's fetch ended: its next waiting trigger, now started (None: idle)."""
        camera = self._cameras.get(key)
        if camera is None:
            return None
        if camera.waiting:
            return camera.waiting.popleft()
        del self._cameras[key]
        return None

    def busy(self, key: str) -> bool:
        """Whether the camera has a trigger being fetched."""
        camera = self._cameras.get(key)
        return camera is not None and camera.busy

    def waiting_for(self, key: str) -> int:
        """Triggers waiting behind the camera's fetch."""
        camera = self._cameras.get(key)
        return len(camera.waiting) if camera is not None else 0
