"""The image's entry point (docker/entrypoint.sh), run directly with POSIX sh: a data root
the container's user cannot write stops a command with the command that mends it, and holds
the daemon (`run`) until it can write there; a good one hands over to snapshot-processor
with the arguments."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import CHECKOUT
from tests.support.wait import wait_for_text

ENTRYPOINT = CHECKOUT / "docker" / "entrypoint.sh"
EXIT_DATA_ROOT_NOT_WRITABLE = 77
# The image's user; the tests run as root here, so the script runs as this uid through setpriv.
IMAGE_UID = 1000
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder every uid can enter (pytest's tmp_path is root's alone), holding the
    script and a stand-in ``snapshot-processor`` that says who ran it with what."""
    top = Path(tempfile.mkdtemp(prefix="entrypoint-"))
    try:
        top.chmod(0o755)
        shutil.copy(ENTRYPOINT, top / "entrypoint.sh")
        (top / "bin").mkdir(mode=0o755)
        stand_in = top / "bin" / "snapshot-processor"
        stand_in.write_text('#!/bin/sh\necho "snapshot-processor as uid $(id -u): $*"\n')
        stand_in.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


def _command(world: Path, *args: str, unprivileged: bool = True) -> list[str]:
    command = ["sh", str(world / "entrypoint.sh"), *args]
    if unprivileged and IS_ROOT:
        command = [
            "setpriv",
            f"--reuid={IMAGE_UID}",
            f"--regid={IMAGE_UID}",
            "--clear-groups",
            *command,
        ]
    return command


def _env(world: Path, data_root: Path, **env: str) -> dict[str, str]:
    return {"PATH": f"{world / 'bin'}:/usr/bin:/bin", "SNAPSHOTS_ROOT_DIR": str(data_root), **env}


def _run(
    world: Path, data_root: Path, *args: str, unprivileged: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(world, *args, unprivileged=unprivileged),
        env=_env(world, data_root, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def _started(
    world: Path, data_root: Path, *args: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The script in the background as the image's user, its output in a file."""
    output = world / "output"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            _command(world, *args),
            env=_env(world, data_root, **env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _not_writable_by_the_runner(path: Path) -> None:
    """Root-owned 0755 when the script runs as uid 1000; 0555 when the tests are not root."""
    path.mkdir(exist_ok=True)
    path.chmod(0o755 if IS_ROOT else 0o555)


def _writable_by_the_runner(path: Path) -> None:
    path.mkdir(exist_ok=True)
    if IS_ROOT:
        os.chown(path, IMAGE_UID, IMAGE_UID)


def _needs_setpriv() -> None:
    if IS_ROOT and shutil.which("setpriv") is None:
        pytest.skip(
            "running as root and setpriv (util-linux) is missing: no way to drop to uid 1000"
        )


def test_a_data_root_the_user_cannot_write_stops_a_command_with_the_fix(world: Path) -> None:
    _needs_setpriv()
    data = world / "data"
    _not_writable_by_the_runner(data)
    done = _run(world, data, "check-config", SNAPSHOTS_HOST_DIR="./data")
    assert done.returncode == EXIT_DATA_ROOT_NOT_WRITABLE, done.stderr
    uid = IMAGE_UID if IS_ROOT else os.geteuid()
    gid = IMAGE_UID if IS_ROOT else os.getegid()
    assert f"the data root {data} cannot be written by uid {uid}" in done.stderr
    assert f"sudo chown -R {uid}:{gid} ./data" in done.stderr
    assert "snapshot-processor as uid" not in done.stdout  # the daemon never started
    assert os.listdir(data) == []  # and the check left nothing behind


def test_a_missing_data_root_under_a_folder_the_user_cannot_write(world: Path) -> None:
    _needs_setpriv()
    parent = world / "mnt"
    _not_writable_by_the_runner(parent)
    # `--config run` names a file: the command is check-config, which does not wait.
    done = _run(world, parent / "ftp", "--config", "run", "check-config")
    assert done.returncode == EXIT_DATA_ROOT_NOT_WRITABLE
    # Without SNAPSHOTS_HOST_DIR the command names what to put in its place.
    assert f"<the host folder mounted on {parent / 'ftp'}>" in done.stderr


@contextlib.contextmanager
def _read_only_mount(path: Path) -> Iterator[None]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a read-only tmpfs needs root")
def test_a_read_only_mount_stops_even_root(world: Path) -> None:
    # Root passes every permission check, so only a write that is really tried finds a
    # `:ro` mount: the script must not trust `test -w`.
    data = world / "data"
    with _read_only_mount(data):
        done = _run(world, data, "outbox", "show", unprivileged=False)
    assert done.returncode == EXIT_DATA_ROOT_NOT_WRITABLE, done.stdout
    assert "cannot be written by uid 0" in done.stderr


def test_the_daemon_waits_for_the_data_root_and_starts_once_it_can_write(world: Path) -> None:
    # Exiting would only have `restart: unless-stopped` start it again and again.
    _needs_setpriv()
    data = world / "data"
    _not_writable_by_the_runner(data)
    with _started(
        world,
        data,
        "--config",
        "/app/config/x.toml",
        "run",
        SNAPSHOTS_HOST_DIR="./data",
        ENTRYPOINT_RECHECK_SECONDS="0.2",
        ENTRYPOINT_REMINDER_SECONDS="1",
    ) as (process, output):
        assert wait_for_text(output, "starts by itself once", 10)
        assert wait_for_text(output, "still waiting for the data root", 10)  # the reminder
        assert process.poll() is None
        text = output.read_text()
        assert text.count("sudo chown -R") == text.count("still waiting") + 1
        assert "snapshot-processor as uid" not in text

        # The hint, followed.
        if IS_ROOT:
            _writable_by_the_runner(data)
        else:
            data.chmod(0o755)
        assert process.wait(10) == 0
    text = output.read_text()
    assert f"the data root {data} is writable now; starting." in text
    uid = IMAGE_UID if IS_ROOT else os.geteuid()
    assert text.endswith(f"snapshot-processor as uid {uid}: --config /app/config/x.toml run\n")
    assert os.listdir(data) == []


def test_sigterm_while_waiting_exits_77_at_once(world: Path) -> None:
    _needs_setpriv()
    data = world / "data"
    _not_writable_by_the_runner(data)
    with _started(world, data, "run", ENTRYPOINT_RECHECK_SECONDS="30") as (process, output):
        assert wait_for_text(output, "starts by itself once", 10)
        time.sleep(0.3)  # into the 30 s wait
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == EXIT_DATA_ROOT_NOT_WRITABLE
        assert time.monotonic() - sent < 2.0
    assert "snapshot-processor as uid" not in output.read_text()


def test_a_writable_data_root_execs_snapshot_processor_with_the_arguments(world: Path) -> None:
    _needs_setpriv()
    data = world / "data"
    _writable_by_the_runner(data)
    done = _run(world, data, "--config", "/app/config/x.toml", "check-config")
    assert done.returncode == 0, done.stderr
    uid = IMAGE_UID if IS_ROOT else os.geteuid()
    assert (
        done.stdout
        == f"snapshot-processor as uid {uid}: --config /app/config/x.toml check-config\n"
    )
    assert os.listdir(data) == []  # the write test cleaned up after itself


def test_a_missing_data_root_it_may_create_is_created(world: Path) -> None:
    data = world / "fresh" / "ftp"
    done = _run(world, data, "--help", unprivileged=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(": --help\n")
    assert data.is_dir()


def test_the_script_is_executable_posix_sh() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    # dash is Debian's /bin/sh, as in the image: -n parses the script without running it.
    checked = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
