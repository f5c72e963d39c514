"""Retry policy as data (:class:`RetryPolicy`) and one loop's running :class:`Backoff`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Wait ``first``, ``first*factor``, ... at most ``maximum`` seconds between attempts;
    ``jitter`` is the random fraction of each delay (0.1 = up to 10 % less), ``attempts``
    counts the first one too (None: no bound)."""

    first: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if self.first < 0 or self.maximum < self.first:
            raise ValueError(f"need 0 <= first <= maximum, not {self.first} and {self.maximum}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within 0..1, not {self.jitter}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1 for the first retry), jitter applied."""
        base = min(self.maximum, self.first * self.factor ** max(0, retry - 1))
        return base * (1 - self.jitter * random.random()) if self.jitter else base

    def delays(self) -> Iterator[float]:
        """The pause before each retry, as many as ``attempts`` allows (endless if None)."""
        retry = 1
        while self.attempts is None or retry < self.attempts:
            yield self.delay(retry)
            retry += 1

    def backoff(self) -> Backoff:
        return Backoff(self)


@dataclass
class Backoff:
    """One loop's place in a :class:`RetryPolicy`: :meth:`next` on failure, :meth:`reset` on success."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    failures: int = 0

    def next(self) -> float:
        self.failures += 1
        return self.policy.delay(self.failures)

    @property
    def exhausted(self) -> bool:
        """True once the policy's attempts are used up (never, without a bound)."""
        attempts = self.policy.attempts
        return attempts is not None and self.failures >= attempts

    def reset(self) -> None:
        self.failures = 0
