"""The real CLI at start: what it needs and cannot get ends it at once with one clear line
and a documented exit code; one daemon per data root; `make rund` reports a failed start.

No broker is needed: the daemons here point at a closed port and run on regardless.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylib.runtime.dataroot import DataRootLock
from tests.support.paths import CHECKOUT
from tests.support.wait import wait_for_text

TOP = CHECKOUT
EXIT_START = 3
EXIT_BUSY = 4


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(TOP),  # this checkout, wherever the test runs from
        "SNAPSHOTS_ROOT_DIR": str(root),
        "HTTP_PORT": "0",
        "SECRETS_DIR": str(root.parent / "no-secrets"),
        "RABBITMQ_SERVER_ADDRESS": f"127.0.0.1:{_closed_port()}",
        "SHUTDOWN_TIMEOUT": "5",
        **extra,
    }


def _run_to_end(cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "snapshot_processor", "run"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line]


def test_ftp_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(
            tmp_path / "data",
            FTP_PASS="ftp-secret",
            FTP_LISTEN_ADDRESS="127.0.0.1",
            FTP_PORT=str(port),
        )
        code, output = _run_to_end(tmp_path, env)
    assert code == EXIT_START, output
    [line] = _errors(output)
    assert f"FTP port 127.0.0.1:{port} cannot be used: Address already in use" in line
    assert "Traceback" not in output
    assert "starting chain" not in output  # refused before anything started


def test_data_root_that_cannot_be_created_is_one_line_and_exit_3(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = _run_to_end(tmp_path, _env(blocker / "data"))
    assert code == EXIT_START, output
    [line] = _errors(output)
    assert f"cannot create data root {blocker / 'data'}" in line
    assert "Traceback" not in output


def test_outbox_that_cannot_be_opened_is_named_and_exit_3(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "outbox.sqlite3").mkdir(parents=True)  # a folder where the database belongs
    code, output = _run_to_end(tmp_path, _env(root))
    assert code == EXIT_START, output
    assert _errors(output)
    assert all(str(root / "outbox.sqlite3") in line for line in _errors(output))
    assert "Traceback" not in output
    assert output.count("could not start") <= 2  # the thread's line and the daemon's, once


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A daemon running on ``tmp_path/data``, logging to a file; stopped at the end."""
    root, log_path = tmp_path / "data", tmp_path / "first.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snapshot_processor", "run"],
            env=_env(root),
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for_text(log_path, "snapshot-processor running", 30), log_path.read_text()
        yield proc, root, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_second_daemon_on_one_data_root_is_refused(
    running: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    first, root, _ = running
    code, output = _run_to_end(tmp_path, _env(root))
    assert code == EXIT_BUSY, output
    [line] = _errors(output)
    assert f"data root {root} is in use by another daemon (pid {first.pid}" in line
    assert "Traceback" not in output
    assert first.poll() is None  # the first runs on

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    with DataRootLock(root):  # released with the process
        pass


def test_a_daemon_with_no_camera_says_so_in_one_line(
    running: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    _, _, log_path = running
    assert wait_for_text(log_path, "no camera is configured", 15), log_path.read_text()
    said = [line for line in log_path.read_text().splitlines() if "no camera is" in line]
    assert len(said) == 1
    assert " WARNING " in said[0]
    assert "OUTPUT_1_TYPE=camera" in said[0]


def test_reconnect_warning_says_why(running: tuple[subprocess.Popen[bytes], Path, Path]) -> None:
    _, _, log_path = running
    for who in ("publisher: broker", "listener: broker"):
        assert wait_for_text(log_path, who, 15), log_path.read_text()
    lines = [
        line
        for line in log_path.read_text().splitlines()
        if "publisher: broker" in line or "listener: broker" in line
    ]
    assert lines
    for line in lines:
        assert "ConnectionRefusedError: [Errno 111] Connection refused" in line, line


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_rund_twice_keeps_one_daemon_and_reports_the_second(tmp_path: Path) -> None:
    # RUN is the Makefile's command prefix; `env` runs the venv's console script directly.
    env = _env(tmp_path / "data")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    pidfile, logfile = tmp_path / "run" / "daemon.pid", tmp_path / "run" / "daemon.log"
    make = [
        "make",
        "--no-print-directory",
        "-C",
        str(TOP),
        "RUN=env",
        f"PIDFILE={pidfile}",
        f"LOGFILE={logfile}",
    ]
    first = subprocess.run([*make, "rund"], env=env, capture_output=True, text=True, timeout=60)
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        assert first.stderr == ""  # the first run has no log yet: no stray "cannot open"
        pid = int(pidfile.read_text())
        assert f"started, pid {pid}" in first.stdout
        os.kill(pid, 0)  # alive

        second = subprocess.run(
            [*make, "rund"], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert "the daemon stopped at start" in second.stderr
        assert f"is in use by another daemon (pid {pid}" in second.stderr
        assert int(pidfile.read_text()) == pid  # still the running one's
    finally:
        stop = subprocess.run([*make, "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert wait_for_text(logfile, "stopped (exit code 0)", 20), logfile.read_text()


def test_an_upload_queue_that_cannot_be_opened_is_one_line_and_exit_3(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "uploads.sqlite3").mkdir(parents=True)  # a folder where the file belongs
    code, output = _run_to_end(tmp_path, _env(root, S3_BUCKET="house-pictures"))
    assert code == EXIT_START, output
    [line] = _errors(output)
    assert "the upload queue cannot be opened" in line
    assert "uploads.sqlite3" in line
    assert "Traceback" not in output


def test_a_damaged_recent_events_file_is_set_aside_and_the_daemon_starts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "recent-events.sqlite3").write_bytes(b"not a database at all" * 100)
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapshot_processor", "run"],
        env=_env(root),
        cwd=tmp_path,
        stdout=(tmp_path / "out.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for_text(tmp_path / "out.log", "running", 30)
        assert list(root.glob("recent-events.sqlite3.damaged-*"))
        assert "was damaged" in (tmp_path / "out.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
