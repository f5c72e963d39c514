"""A named, stoppable thread that logs and reports a crash and restarts within a budget."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from pylib.sentry import capture_exception

log = logging.getLogger(__name__)

THREAD_CRASHES = Counter(
    "thread_crashes_total", "Times a worker thread died with an exception", ["thread"]
)


@dataclass(frozen=True)
class RestartBudget:
    """At most ``restarts`` restarts within ``window`` seconds, ``delay`` seconds apart."""

    restarts: int = 5
    window: float = 60.0
    delay: float = 1.0


class Worker(threading.Thread):
    """Base class for the daemon's threads.

    Subclasses implement :meth:`work`, which runs until :meth:`should_keep_running`
    turns false. Sockets and other per-thread resources are created in
    :meth:`on_thread_start` and released in :meth:`on_thread_stop`, both on this thread.
    An exception out of :meth:`work` is logged with the thread's name and reported to
    Sentry; the thread then starts over after ``budget.delay``. When it has died more
    often than the budget allows, ``on_fatal`` is called (the daemon stops the process
    with a non-zero exit) and the thread ends: never a silently dead thread.
    """

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        # Daemon threads: one that ignores its stop request cannot keep the process alive.
        super().__init__(name=name, daemon=True)
        self.stop_event = stop_event
        self.budget = budget or RestartBudget()
        self.on_fatal = on_fatal
        self.failure: BaseException | None = None
        self._halt = threading.Event()
        self._crashes: deque[float] = deque()

    # --- to override -------------------------------------------------------------
    def on_thread_start(self) -> None:
        """Create this thread's resources (runs on the thread, before each start of work)."""

    def work(self) -> None:
        """The thread's loop; poll with a timeout and return when told to stop."""
        raise NotImplementedError

    def on_thread_stop(self) -> None:
        """Release this thread's resources (runs on the thread, also after a crash)."""

    # --- control -------------------------------------------------------------------
    def should_keep_running(self) -> bool:
        """False once this thread was asked to stop."""
        return not self._halt.is_set()

    def stop(self) -> None:
        """Ask the thread to finish its current work and end."""
        self._halt.set()

    def stop_and_join(self, timeout: float) -> bool:
        """Stop, wait up to ``timeout`` seconds; True if the thread ended."""
        self.stop()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()

    @property
    def healthy(self) -> bool:
        """Alive and not given up on."""
        return self.failure is None and (self.is_alive() or self._halt.is_set())

    def run(self) -> None:
        while self.should_keep_running():
            try:
                self.on_thread_start()
                self.work()
                return
            except Exception as exc:
                THREAD_CRASHES.labels(self.name).inc()
                log.exception("thread %s died: %s", self.name, exc)
                capture_exception(exc, thread=self.name)
                if not self._may_restart():
                    self.failure = exc
                    log.critical(
                        "thread %s died %d times within %.0f s; giving up",
                        self.name,
                        len(self._crashes),
                        self.budget.window,
                    )
                    if self.on_fatal is not None:
                        self.on_fatal(self.name, exc)
                    return
                self._halt.wait(self.budget.delay)
                log.warning("restarting thread %s", self.name)
            finally:
                self._safe_thread_stop()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.budget.window:
            self._crashes.popleft()
        return len(self._crashes) <= self.budget.restarts

    def _safe_thread_stop(self) -> None:
        try:
            self.on_thread_stop()
        except Exception:
            log.exception("thread %s failed to release its resources", self.name)
