"""Log lines for a trouble that repeats: at its start, change of kind, every ``interval``, end."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pylib.observe.logs import printable


class TroubleLog:
    """The log of one repeating trouble of ``what`` (``"uploads to drive"``); thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = 600.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.level = level
        self._clock = clock
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._kind: str | None = None
        self._since: float | None = None
        self._failures = 0
        self._remind_at = 0.0

    def failed(self, reason: str, kind: str | None = None) -> None:
        """Count a failure; log it if new, of a new ``kind`` (default: the reason), or due again."""
        kind = reason if kind is None else kind
        with self._lock:
            now = self._clock()
            self._failures += 1
            self._reason = reason
            if self._since is None:
                self._since = now
                message = "%s failing: %s"
                args: tuple[object, ...] = (self.what, printable(reason))
            elif kind != self._kind:
                message = "%s failing differently now: %s (%d failure(s) over %.0f s)"
                args = (self.what, printable(reason), self._failures, now - self._since)
            elif now >= self._remind_at:
                message = "%s still failing: %s (%d failure(s) over %.0f s)"
                args = (self.what, printable(reason), self._failures, now - self._since)
            else:
                return
            self._kind = kind
            self._remind_at = now + self.interval
        self.logger.log(self.level, message, *args)

    def succeeded(self) -> None:
        """The trouble, if any, is over: one INFO line."""
        with self._lock:
            if self._since is None:
                return
            failures, lasted = self._failures, self._clock() - self._since
            self._reason = self._kind = self._since = None
            self._failures = 0
            self._remind_at = 0.0
        self.logger.info(
            "%s recovered after %d failure(s) over %.0f s", self.what, failures, lasted
        )

    @property
    def reason(self) -> str | None:
        """The last failure's reason while the trouble lasts, else None."""
        return self._reason

    def lasted(self) -> float | None:
        """Seconds since the trouble began, or None when there is none."""
        since = self._since
        return None if since is None else self._clock() - since
