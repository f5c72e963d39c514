"""The cost guard: no paid detection call for an image already sent, nor past the caps."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from prometheus_client import Counter

DETECTION_CALLS = Counter("detection_calls_total", "Calls made to a detection backend", ["backend"])
DETECTION_SKIPPED = Counter(
    "detection_skipped_total",
    "Snapshots passed on without detection (duplicate, hourly_cap, daily_cap, busy, error, stopping)",
    ["reason"],
)

HOUR = 3600.0
DAY = 86400.0

# However many distinct images arrive within the window, remember at most this many.
MAX_REMEMBERED = 10_000


class CostGuard:
    """Decides whether one more detection call may go ahead: the same bytes (SHA-256) not
    twice within ``dedupe_window`` seconds, nor past ``max_per_hour``/``max_per_day`` in
    rolling windows (None: no cap). Memory is bounded by ``max_remembered`` and the caps."""

    def __init__(
        self,
        dedupe_window: float = 60,
        max_per_hour: int | None = None,
        max_per_day: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        self.dedupe_window = float(dedupe_window)
        self.max_per_hour = max_per_hour
        self.max_per_day = max_per_day
        self.clock = clock
        self.max_remembered = max_remembered
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # oldest first
        self._hour: deque[float] = deque()
        self._day: deque[float] = deque()
        self._lock = threading.Lock()

    def check(self, image: bytes) -> str | None:
        """None if the call may go ahead (it is then recorded), else why not:
        ``"duplicate"``, ``"hourly_cap"`` or ``"daily_cap"``."""
        digest = hashlib.sha256(image).digest()
        with self._lock:
            now = self.clock()
            self._prune(now)
            if digest in self._seen:
                return "duplicate"
            if self.max_per_hour is not None and len(self._hour) >= self.max_per_hour:
                return "hourly_cap"
            if self.max_per_day is not None and len(self._day) >= self.max_per_day:
                return "daily_cap"
            if self.dedupe_window > 0:
                self._seen[digest] = now
                while len(self._seen) > self.max_remembered:
                    self._seen.popitem(last=False)
            if self.max_per_hour is not None:
                self._hour.append(now)
            if self.max_per_day is not None:
                self._day.append(now)
            return None

    @property
    def remembered(self) -> int:
        """How many image hashes are held (for tests and metrics)."""
        with self._lock:
            return len(self._seen)

    def _prune(self, now: float) -> None:
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if now - oldest < self.dedupe_window:
                break
            self._seen.popitem(last=False)
        for times, span in ((self._hour, HOUR), (self._day, DAY)):
            while times and now - times[0] >= span:
                times.popleft()
