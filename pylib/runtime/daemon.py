"""Start-up in order, shutdown in reverse within a bounded time, signals, exit code."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from pylib.observe.logs import toggle_debug
from pylib.runtime.worker import WorkerStartError

log = logging.getLogger(__name__)

# Exit codes (the README lists them): 1 failed while running, 3 could not start.
EXIT_FAILED = 1
EXIT_START = 3


class StartError(Exception):
    """Something the daemon needs at start is missing or in use; the message names it."""


class Component(Protocol):
    """Anything the daemon starts and stops: a thread, a server, a connection."""

    name: str

    def start(self) -> None:
        """Begin; return once running."""

    def stop_and_join(self, timeout: float) -> bool:
        """Stop within ``timeout`` seconds; True if it did."""


@dataclass
class Step:
    """A start-up step: a component, or a pair of callables for something simpler."""

    name: str
    start: Callable[[], None]
    stop: Callable[[float], bool]


class Daemon:
    """Runs components until a signal or a fatal failure, then stops them in reverse order;
    ``stop_event``, shared with every thread, is set when the process begins to stop."""

    def __init__(self, name: str, shutdown_timeout: float = 10.0) -> None:
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self.stop_event = threading.Event()
        self.exit_code = 0
        self._steps: list[Step] = []
        self._started: list[Step] = []
        self._lock = threading.Lock()
        self._debug_base_level = logging.INFO

    def add(self, component: Component) -> None:
        """Add a component; components start in the order added and stop in reverse."""
        self._steps.append(Step(component.name, component.start, component.stop_and_join))

    def add_step(self, name: str, start: Callable[[], None], stop: Callable[[float], bool]) -> None:
        self._steps.append(Step(name, start, stop))

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Begin shutdown (safe from any thread); the first non-zero exit code wins."""
        with self._lock:
            if exit_code and not self.exit_code:
                self.exit_code = exit_code
        if not self.stop_event.is_set():
            log.info("stopping: %s", reason)
        self.stop_event.set()

    def on_fatal(self, thread_name: str, exc: BaseException) -> None:
        """A worker gave up: stop the whole process with a non-zero exit."""
        self.request_stop(f"thread {thread_name} failed for good: {exc}", exit_code=1)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop; SIGHUP toggles DEBUG logging. Main thread only."""

        def on_stop_signal(signum: int, frame: FrameType | None) -> None:
            self.request_stop(f"signal {signal.Signals(signum).name}")

        def on_hup(signum: int, frame: FrameType | None) -> None:
            level = toggle_debug(self._debug_base_level)
            log.warning("SIGHUP: log level now %s", logging.getLevelName(level))

        root_level = logging.getLogger().level
        self._debug_base_level = logging.INFO if root_level == logging.DEBUG else root_level
        signal.signal(signal.SIGTERM, on_stop_signal)
        signal.signal(signal.SIGINT, on_stop_signal)
        signal.signal(signal.SIGHUP, on_hup)

    def start(self) -> None:
        """Start every step in order; on a failure stop what started and re-raise."""
        for step in self._steps:
            log.info("starting %s", step.name)
            try:
                step.start()
            except Exception as exc:
                if isinstance(exc, StartError | WorkerStartError):
                    # Named already (a port, a path): a traceback would only bury the line.
                    log.error("could not start %s: %s", step.name, exc)
                else:
                    log.exception("could not start %s", step.name)
                self.stop()
                raise
            self._started.append(step)

    def stop(self) -> bool:
        """Stop started steps in reverse order within the shutdown bound; True if all did."""
        self.stop_event.set()
        deadline = time.monotonic() + self.shutdown_timeout
        clean = True
        while self._started:
            step = self._started.pop()
            remaining = max(0.1, deadline - time.monotonic())
            try:
                stopped = step.stop(remaining)
            except Exception:
                log.exception("error while stopping %s", step.name)
                stopped = False
            if not stopped:
                clean = False
                log.error("%s did not stop within %.1f s", step.name, self.shutdown_timeout)
        return clean

    def run(self) -> int:
        """Start, wait for a stop request, stop; returns the process exit code."""
        try:
            self.start()
        except Exception as exc:
            code = EXIT_START if isinstance(exc, StartError | WorkerStartError) else EXIT_FAILED
            log.info("%s did not start (exit code %d)", self.name, code)
            return code
        log.info("%s running", self.name)
        # What start-up made lives as long as the process: full collections need not walk it.
        gc.freeze()
        # Wake up now and then so signal handlers run promptly on the main thread.
        while not self.stop_event.wait(0.5):
            pass
        if not self.stop():
            self.exit_code = self.exit_code or 1
        log.info("%s stopped (exit code %d)", self.name, self.exit_code)
        return self.exit_code
