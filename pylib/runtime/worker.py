"""A named, stoppable thread that logs and reports a crash and restarts within a budget."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from pylib.observe.sentry import capture_exception
from pylib.runtime.health import Health

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0

THREAD_CRASHES = Counter(
    "thread_crashes_total", "Times a worker thread died with an exception", ["thread"]
)


class WorkerStartError(RuntimeError):
    """A thread could not get ready: its first attempt failed, or it took too long."""


@dataclass(frozen=True)
class RestartBudget:
    """At most ``restarts`` restarts within ``window`` seconds, ``delay`` seconds apart."""

    restarts: int = 5
    window: float = 60.0
    delay: float = 1.0


class Worker(threading.Thread):
    """Base class for the daemon's threads: :meth:`work` runs until :meth:`should_keep_running`
    turns false, and starts over after a crash within ``budget``; past it, ``on_fatal``.
    Sockets belong in :meth:`on_thread_open`: a restart happens on the same thread, and an
    inproc PULL bound again is not reached by an upstream PUSH connected to the first one."""

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
        self._opened = False
        # Set while the thread is opened and started, ready for work (and messages).
        self.ready = threading.Event()
        self._first_attempt = threading.Event()
        self._start_error: BaseException | None = None

    def on_thread_open(self) -> None:
        """Create what lives as long as the thread (runs on it, once, before the first start)."""

    def on_thread_close(self) -> None:
        """Release what :meth:`on_thread_open` created (once, at the end, or when it failed)."""

    def on_thread_start(self) -> None:
        """Create per-attempt resources (runs on the thread, before each start of work)."""

    def work(self) -> None:
        """The thread's loop; poll with a timeout and return when told to stop."""
        raise NotImplementedError

    def on_thread_stop(self) -> None:
        """Release per-attempt resources (runs on the thread after each end of work, crash or not)."""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the thread; return once it is ready, or raise :class:`WorkerStartError`."""
        super().start()
        if not self._first_attempt.wait(timeout):
            self.stop()
            raise WorkerStartError(f"{self.name} was not ready within {timeout:.0f} s")
        if self._start_error is not None:
            self.join(timeout)
            raise WorkerStartError(f"{self.name}: {self._start_error}") from self._start_error

    def should_keep_running(self) -> bool:
        return not self._halt.is_set()

    def wait_for_stop(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, less if asked to stop; True if asked to stop."""
        return self._halt.wait(timeout)

    def stop(self) -> None:
        """Ask the thread to finish its current work and end."""
        self._halt.set()

    def stop_and_join(self, timeout: float) -> bool:
        self.stop()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()

    @property
    def healthy(self) -> bool:
        """Alive and not given up on."""
        return self.failure is None and (self.is_alive() or self._halt.is_set())

    def troubles(self) -> list[str]:
        """What is wrong outside the thread now (a broker away), a short line each, for health."""
        return []

    def health(self) -> Health:
        """A dead thread is a problem; its troubles are warnings (a restart would not mend them)."""
        problems = [] if self.healthy else [f"thread {self.name} is dead"]
        return Health(problems, self.troubles(), {"threads": {self.name: self.healthy}})

    def run(self) -> None:
        try:
            while self.should_keep_running():
                try:
                    self._attempt()
                    return
                except Exception as exc:
                    if not self._first_attempt.is_set():
                        # Never got going: start() reports it; no restart loop at start.
                        log.error("thread %s could not start: %s", self.name, exc)
                        self._start_error = self.failure = exc
                        self._halt.set()
                        return
                    if not self._crashed(exc):
                        return
        finally:
            self.ready.clear()
            self._first_attempt.set()
            if self._opened:
                self._opened = False
                self._safe_call(self.on_thread_close)

    def _attempt(self) -> None:
        if not self._opened:
            try:
                self.on_thread_open()
            except Exception:
                self._safe_call(self.on_thread_close)
                raise
            self._opened = True
        try:
            self.on_thread_start()
            self.ready.set()
            self._first_attempt.set()
            self.work()
        finally:
            self.ready.clear()
            self._safe_call(self.on_thread_stop)

    def _crashed(self, exc: Exception) -> bool:
        """Log and report a crash; True if the thread may start over (after the delay)."""
        THREAD_CRASHES.labels(self.name).inc()
        log.error("thread %s died: %s", self.name, exc, exc_info=exc)
        capture_exception(exc, thread=self.name)
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.budget.window:
            self._crashes.popleft()
        if len(self._crashes) > self.budget.restarts:
            self.failure = exc
            log.critical(
                "thread %s died %d times within %.0f s; giving up",
                self.name,
                len(self._crashes),
                self.budget.window,
            )
            if self.on_fatal is not None:
                self.on_fatal(self.name, exc)
            return False
        self._halt.wait(self.budget.delay)
        log.warning("restarting thread %s", self.name)
        return True

    def _safe_call(self, hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:
            log.exception("thread %s failed to release its resources", self.name)
