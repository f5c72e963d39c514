"""Retry policy as data: a capped exponential back-off that resets once things work."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``start``, ``start*factor``, ... up to ``maximum`` seconds; :meth:`reset` on success."""

    start: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    _next: float = field(default=0.0, init=False, repr=False)

    def next(self) -> float:
        """The delay to wait before the next attempt."""
        delay = self._next or self.start
        self._next = min(self.maximum, delay * self.factor)
        return delay

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self._next = 0.0
