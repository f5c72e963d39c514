"""A circuit breaker: after ``failures`` failures in a row, refuse calls for ``cool_down``
seconds, then let one probe through (half-open): its success closes the breaker, its
failure opens it again. Thread-safe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    """The breaker's state; the value is what a gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Counts failures in a row of one outside thing and says whether to call it now;
    ``on_change(state)`` runs (under no lock of ours) after every change of state."""

    def __init__(
        self,
        *,
        failures: int = 3,
        cool_down: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        if cool_down < 0:
            raise ValueError(f"cool_down must not be negative, not {cool_down}")
        self.threshold = failures
        self.cool_down = cool_down
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._last_error = ""

    @property
    def state(self) -> BreakerState:
        """The state now (open, cool-down over or not, until :meth:`allow` lets a probe through)."""
        with self._lock:
            return self._state

    @property
    def failures(self) -> int:
        with self._lock:
            return self._failures

    @property
    def last_error(self) -> str:
        """The words of the last failure recorded ("" if none since the last success)."""
        with self._lock:
            return self._last_error

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.cool_down - self._clock())

    def allow(self) -> bool:
        """Whether to make a call now. After the cool-down the first caller is the probe (the
        breaker turns half-open); others are refused until its outcome is recorded."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if self._clock() - self._opened_at < self.cool_down:
                    return False
                self._state, self._probing = BreakerState.HALF_OPEN, True
                changed: BreakerState | None = BreakerState.HALF_OPEN
            elif self._probing:
                return False
            else:
                self._probing = True
                changed = None
        self._changed(changed)
        return True

    def succeeded(self) -> None:
        """A call went through: the breaker closes and the count starts again."""
        with self._lock:
            changed = BreakerState.CLOSED if self._state is not BreakerState.CLOSED else None
            self._state, self._failures, self._probing = BreakerState.CLOSED, 0, False
            self._last_error = ""
        self._changed(changed)

    def reset(self) -> None:
        """Forget the failures without calling it a success: closed, no change reported."""
        with self._lock:
            self._state, self._failures, self._probing = BreakerState.CLOSED, 0, False
            self._last_error = ""

    def failed(self, error: str) -> bool:
        """A call failed (``error`` in a few words); True if this opened the breaker."""
        with self._lock:
            self._failures += 1
            self._last_error = error
            self._probing = False
            opens = self._state is BreakerState.HALF_OPEN or (
                self._state is BreakerState.CLOSED and self._failures >= self.threshold
            )
            if opens:
                self._state, self._opened_at = BreakerState.OPEN, self._clock()
        self._changed(BreakerState.OPEN if opens else None)
        return opens

    def _changed(self, state: BreakerState | None) -> None:
        if state is not None and self._on_change is not None:
            self._on_change(state)
