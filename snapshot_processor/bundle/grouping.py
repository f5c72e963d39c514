"""Which sensor event a trigger belongs to. The triggers of one event, one per camera the
sensor is mapped to, share a bundle id: the same ``traceparent`` trace, else the same
``active_input`` device key, within ``window`` seconds of the event's first trigger."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pylib.chain.envelope import new_id

__all__ = ["BundleGrouping", "event_key"]

# W3C Trace Context: version-trace_id-parent_id-flags; an all-zero trace id is invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def event_key(sensor_key: str | None, traceparent: str | None) -> str | None:
    """What the triggers of one sensor event have in common (None: nothing known)."""
    match = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if match and match.group(1) != "0" * 32:
        return f"trace {match.group(1)}"
    if sensor_key and sensor_key.strip():
        return f"sensor {sensor_key.strip().casefold()}"
    return None


@dataclass
class _Open:
    bundle_id: str
    opened: float


class BundleGrouping:
    """Bundle ids for triggers, on one thread (the snapshot stage's). A trigger that names
    no sensor is a bundle of its own. Memory holds only the events of the last window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._open: dict[str, _Open] = {}

    def bundle_for(self, sensor_key: str | None, traceparent: str | None, now: float) -> str:
        """The bundle of a trigger received at ``now`` (monotonic seconds)."""
        self._open = {k: v for k, v in self._open.items() if now - v.opened <= self.window}
        key = event_key(sensor_key, traceparent)
        if key is None:
            return new_id()
        found = self._open.get(key)
        if found is None:
            found = self._open[key] = _Open(new_id(), now)
        return found.bundle_id
