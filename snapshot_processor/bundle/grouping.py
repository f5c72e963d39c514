"""Which sensor event a trigger belongs to. The triggers of one event, one per camera the
sensor is mapped to, share a bundle: the same ``traceparent`` trace, else the same
``active_input`` device key, within ``window`` seconds of the event's first trigger and
while the bundle is still collecting."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from pylib.chain.envelope import new_id
from snapshot_processor.storage.files import slug

__all__ = ["BundleGrouping", "BundleRef", "event_key"]

# W3C Trace Context: version-trace_id-parent_id-flags; an all-zero trace id is invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_NAME_PART = 40


def event_key(sensor_key: str | None, traceparent: str | None) -> str | None:
    """What the triggers of one sensor event have in common (None: nothing known)."""
    match = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if match and match.group(1) != "0" * 32:
        return f"trace {match.group(1)}"
    if sensor_key and sensor_key.strip():
        return f"sensor {sensor_key.strip().casefold()}"
    return None


@dataclass(frozen=True)
class BundleRef:
    """One bundle: its id, when its first trigger came (unix seconds), what fired (a sensor's
    key, else None) and its ``group``, ``YYYY/MM/DD/<name>``: its folder below ``bundles/``
    on disk and below the top folder or prefix off-site."""

    bundle_id: str
    opened: float
    sensor: str | None
    group: str

    @classmethod
    def new(cls, opened: float, sensor: str | None, first_camera: str) -> BundleRef:
        bundle_id = new_id()
        moment = datetime.fromtimestamp(opened, UTC)
        what = slug(sensor or first_camera)[:_NAME_PART]
        name = f"{moment:%Y%m%dT%H%M%S}Z_{what}_{bundle_id[:8]}"
        return cls(bundle_id, opened, sensor, f"{moment:%Y/%m/%d}/{name}")


@dataclass
class _Open:
    ref: BundleRef
    opened: float  # monotonic


class BundleGrouping:
    """Bundles for triggers, on one thread (the snapshot stage's); :meth:`closed` may be
    called from any. A trigger that names no sensor is a bundle of its own. Memory holds
    only the events of the last window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._open: dict[str, _Open] = {}
        self._closed: set[str] = set()
        self._lock = threading.Lock()

    def bundle_for(
        self,
        sensor_key: str | None,
        traceparent: str | None,
        now: float,
        *,
        received: float,
        camera: str,
    ) -> BundleRef:
        """The bundle of a trigger for ``camera`` received at ``now`` (monotonic seconds;
        ``received`` is the same moment in unix seconds)."""
        with self._lock:
            closed, self._closed = self._closed, set()
        self._open = {
            k: v
            for k, v in self._open.items()
            if now - v.opened <= self.window and v.ref.bundle_id not in closed
        }
        key = event_key(sensor_key, traceparent)
        sensor = sensor_key.strip() if sensor_key and sensor_key.strip() else None
        if key is None:
            return BundleRef.new(received, sensor, camera)
        found = self._open.get(key)
        if found is None:
            found = self._open[key] = _Open(BundleRef.new(received, sensor, camera), now)
        return found.ref

    def closed(self, bundle_id: str) -> None:
        """The bundle is complete: a later trigger of its sensor starts another (any thread)."""
        with self._lock:
            self._closed.add(bundle_id)
