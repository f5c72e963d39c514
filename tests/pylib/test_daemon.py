"""The daemon starts in order, stops in reverse within its bound, and exits with the right code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pylib.runtime.daemon import Daemon
from pylib.runtime.worker import RestartBudget, Worker
from tests.support.broker import delete_queue, unique_exchange
from tests.support.wait import wait_for_text


def _wait_for_text(log_path: Path, needle: str, timeout: float) -> None:
    assert wait_for_text(log_path, needle, timeout), log_path.read_text(errors="replace")


def _start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    # Output to a file, not a pipe: a pipe nobody reads fills up and blocks the daemon.
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snapshot_processor", "run"],
            env={
                "PATH": os.environ["PATH"],
                "SNAPSHOTS_ROOT_DIR": str(tmp_path),
                "HTTP_PORT": "0",
                **env,
            },
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path


@pytest.mark.broker
def test_sigterm_stops_run_with_exit_zero(tmp_path: Path) -> None:
    exchange = unique_exchange()
    proc, log_path = _start(
        tmp_path, SHUTDOWN_TIMEOUT="5", RABBITMQ_EXCHANGE=exchange, DEVICE_NAME="garage"
    )
    try:
        _wait_for_text(log_path, "running", 30)
        proc.send_signal(signal.SIGHUP)
        _wait_for_text(log_path, "log level now DEBUG", 10)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("no exit 15 s after SIGTERM:\n" + log_path.read_text(errors="replace"))
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rest = log_path.read_text(errors="replace")
        delete_queue(f"{exchange}.snapshot.garage.triggers")
    assert code == 0, rest
    assert elapsed < 5 + 2
    assert "stopped (exit code 0)" in rest


def test_bad_configuration_exits_non_zero(tmp_path: Path) -> None:
    proc, log_path = _start(tmp_path, LOG_LEVEL="LOUD")
    code = proc.wait(timeout=30)
    out = log_path.read_text()
    assert code == 2
    assert "LOG_LEVEL" in out


def recorder(log: list[str], name: str) -> Callable[[float], bool]:
    """A stop callable that notes it was called."""

    def stop(timeout: float) -> bool:
        log.append(name)
        return True

    return stop


class Forever(Worker):
    """Never looks at its stop request: a thread stuck in a call."""

    def __init__(self, stop_event: threading.Event, release: threading.Event) -> None:
        super().__init__("stuck", stop_event)
        self.release = release

    def work(self) -> None:
        self.release.wait(30)


class Dying(Worker):
    def work(self) -> None:
        raise RuntimeError("cannot go on")


def test_stuck_thread_bounds_shutdown_and_fails_exit_code() -> None:
    daemon = Daemon("test", shutdown_timeout=0.5)
    release = threading.Event()
    stuck = Forever(daemon.stop_event, release)
    daemon.add(stuck)
    order: list[str] = []
    daemon.add_step("later", lambda: order.append("start"), recorder(order, "stop"))
    threading.Timer(0.2, daemon.request_stop, args=("test",)).start()
    started = time.monotonic()
    try:
        assert daemon.run() == 1
        assert time.monotonic() - started < 3
        assert order == ["start", "stop"]
    finally:
        release.set()
        stuck.join(5)


def test_dying_thread_stops_process_non_zero() -> None:
    daemon = Daemon("test", shutdown_timeout=2)
    worker = Dying(
        "dying",
        daemon.stop_event,
        budget=RestartBudget(restarts=1, window=60, delay=0.01),
        on_fatal=daemon.on_fatal,
    )
    daemon.add(worker)
    assert daemon.run() == 1
    assert not worker.is_alive()


def test_failed_start_stops_what_started() -> None:
    daemon = Daemon("test")
    stopped: list[str] = []

    def boom() -> None:
        raise OSError("port in use")

    daemon.add_step("first", lambda: None, recorder(stopped, "first"))
    daemon.add_step("second", boom, recorder(stopped, "second"))
    assert daemon.run() == 1
    assert stopped == ["first"]
