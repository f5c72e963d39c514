"""The daemon as tests configure and start it: a camera output's settings, a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import CHECKOUT

TOP = CHECKOUT


def camera_env(
    port: int, password: str, *, n: int = 1, location: str = "Front Door"
) -> dict[str, str]:
    """Settings of Foscam camera output ``n`` at the simulator on ``port`` (user admin)."""
    return {
        f"OUTPUT_{n}_LOCATION": location,
        f"OUTPUT_{n}_TYPE": "camera",
        f"OUTPUT_{n}_VENDOR": "foscam",
        f"OUTPUT_{n}_ADDRESS": f"127.0.0.1:{port}",
        f"OUTPUT_{n}_USER": "admin",
        f"OUTPUT_{n}_PASSWORD": password,
    }


def spawn_daemon(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``snapshot-processor run`` as a child with only ``env`` (and PATH), its output in
    ``log_path``; this checkout's code, wherever the test runs."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "snapshot_processor", "run"],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(TOP), **env},
            cwd=log_path.parent,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
