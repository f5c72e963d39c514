"""The daemon as tests configure it (settings, camera outputs) and start it (a child process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from snapshot_processor import config
from snapshot_processor.config import Settings
from tests.support.paths import CHECKOUT

TOP = CHECKOUT
# The camera simulator's password in tests: an @, a : and a space, as real ones may hold.
PASSWORD = "p@ss:w0rd with space"


def make_settings(tmp_path: Path, exchange: str, **env: str) -> Settings:
    """The daemon's settings for a test: its own exchange and data root, no HTTP port,
    quick heartbeats and camera timeouts; ``env`` adds or overrides."""
    return config.load(
        env={
            "RABBITMQ_EXCHANGE": exchange,
            "DEVICE_NAME": "garage",
            "SNAPSHOTS_ROOT_DIR": str(tmp_path),
            "HTTP_PORT": "0",
            "HEARTBEAT_INTERVAL": "0.5",
            "CAMERA_TIMEOUT": "2",
            "CAMERA_RETRIES": "0",
            "SECRETS_DIR": str(tmp_path / "no-secrets"),
            **env,
        }
    )


def foscam_env(n: int = 1, location: str = "Front Door") -> dict[str, str]:
    """A Foscam camera output; its address comes from the trigger unless the test adds one."""
    return {
        f"OUTPUT_{n}_LOCATION": location,
        f"OUTPUT_{n}_TYPE": "camera",
        f"OUTPUT_{n}_VENDOR": "foscam",
    }


def camera_env(
    port: int, password: str = PASSWORD, *, n: int = 1, location: str = "Front Door"
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


def spawn_daemon(
    env: dict[str, str], log_path: Path, command: str = "run"
) -> subprocess.Popen[bytes]:
    """``snapshot-processor run`` (or ``command``) as a child with only ``env`` (and PATH),
    its output in ``log_path``; this checkout's code, wherever the test runs."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "snapshot_processor", command],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(TOP), **env},
            cwd=log_path.parent,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
