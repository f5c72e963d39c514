"""PyAV is the ``stream`` extra: without it, cameras that give stills work, and a camera
that streams is a configuration error that names the remedy. PyAV is blocked in a child
interpreter (``sys.modules["av"] = None`` makes every import of it fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import CHECKOUT

WITHOUT_PYAV = (
    "import sys; sys.modules['av'] = None; "
    "from snapshot_processor.cli import main; sys.exit(main(['check-config']))"
)


def check_config_without_pyav(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PYAV],
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(CHECKOUT),
            "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
            "SECRETS_DIR": str(tmp_path / "no-secrets"),
            "DEVICE_NAME": "garage",
            "OUTPUT_1_LOCATION": "Porch",
            "OUTPUT_1_TYPE": "camera",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stills_need_no_pyav(tmp_path: Path) -> None:
    done = check_config_without_pyav(tmp_path, OUTPUT_1_VENDOR="foscam")
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout


def test_a_streaming_camera_without_pyav_names_the_extra(tmp_path: Path) -> None:
    done = check_config_without_pyav(
        tmp_path, OUTPUT_1_VENDOR="rtsp", OUTPUT_1_URL="rtsp://cam.home/live"
    )
    assert done.returncode == 2
    assert "OUTPUT_1" in done.stderr
    assert "'stream' extra" in done.stderr
    assert "EXTRAS=stream" in done.stderr
