"""GStreamer's RTSP server (``rtsp_serve.py``) as a child process, for tests."""

from __future__ import annotations

import select
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

SYSTEM_PYTHON = "/usr/bin/python3"
SERVE = Path(__file__).with_name("rtsp_serve.py")


def available() -> bool:
    """Whether Debian's Python has GStreamer's RTSP server (``.ci/run`` installs it)."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0')"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class RtspServer:
    """``codec`` (h264, h265, or x-gst that FFmpeg cannot read) at each of ``paths`` of
    ``rtsp://127.0.0.1:<port>``, with basic auth when ``user`` is given; ``key_interval``
    frames between key frames at ``fps``; without ``key_on_join`` a reader that joins waits
    for the next one, as with many cameras."""

    def __init__(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        fps: int = 15,
        key_interval: int = 30,
        width: int = 640,
        height: int = 360,
        codec: str = "h264",
        paths: tuple[str, ...] = ("/cam",),
        key_on_join: bool = True,
    ) -> None:
        self.user, self.password = user, password
        self.args = [
            *([] if key_on_join else ["--no-key-on-join"]),
            f"--codec={codec}",
            *(f"--path={path}" for path in paths),
            f"--fps={fps}",
            f"--key-interval={key_interval}",
            f"--width={width}",
            f"--height={height}",
            *([f"--user={user}", f"--password={password or ''}"] if user is not None else []),
        ]
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    def url(self, user: str | None = None, password: str | None = None, path: str = "/cam") -> str:
        """The stream's URL, with these credentials (default: the server's own), encoded."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        login = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user else ""
        return f"rtsp://{login}127.0.0.1:{self.port}{path}"

    def start(self) -> RtspServer:
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVE), "--port=0", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._process.stdout], [], [], 0.2)
            if ready:
                line = self._process.stdout.readline()
                if line.startswith("listening on "):
                    self.port = int(line.split()[-1])
                    return self
                if not line:
                    break
        self.stop()
        raise RuntimeError("the RTSP server did not start")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
