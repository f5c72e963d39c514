"""An RTSP camera on this machine: GStreamer's RTSP server (``rtsp_serve.py``) as a child
process, for the stream tests, the camera simulator's ``--rtsp``, the demo and the bench."""

from __future__ import annotations

import collections
import functools
import select
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote

__all__ = ["SYSTEM_PYTHON", "RtspServer", "available", "why_unavailable"]

# Debian's Python, which has GStreamer's bindings; the project's virtualenv has none.
SYSTEM_PYTHON = "/usr/bin/python3"
SERVE = Path(__file__).with_name("rtsp_serve.py")
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "assert Gst.ElementFactory.find('x264enc'), 'no x264enc (gstreamer1.0-plugins-ugly)'"
)


@functools.cache
def why_unavailable() -> str | None:
    """None if Debian's Python runs GStreamer's RTSP server with H.264 (``.ci/run``
    installs it), else why not, in a few words."""
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} does not run ({type(exc).__name__})"
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    return f"GStreamer's RTSP server is not installed for {SYSTEM_PYTHON} ({last})"


def available() -> bool:
    """Whether GStreamer's RTSP server can run here."""
    return why_unavailable() is None


class RtspServer:
    """``codec`` (h264, h265, or x-gst that FFmpeg cannot read) of videotestsrc's
    ``pattern`` (``ball``: a ball on black, some 150 kbit/s at 1080p; ``smpte``: colour bars
    and a patch of noise, some 2 Mbit/s) at each of ``paths`` of ``rtsp://<host>:<port>``
    (port 0: any free one), with basic auth when ``user`` is given; ``key_interval`` frames between key frames at ``fps``; without ``key_on_join``
    a reader that joins waits for the next one, as with many cameras (one encoder runs
    for every path and reader then, as a camera's does)."""

    def __init__(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fps: int = 15,
        key_interval: int = 30,
        width: int = 640,
        height: int = 360,
        codec: str = "h264",
        pattern: str = "ball",
        paths: tuple[str, ...] = ("/cam",),
        key_on_join: bool = True,
    ) -> None:
        self.user, self.password = user, password
        self.host, self.port, self.paths = host, port, paths
        self.args = [
            *([] if key_on_join else ["--no-key-on-join"]),
            f"--codec={codec}",
            f"--pattern={pattern}",
            *(f"--path={path}" for path in paths),
            f"--fps={fps}",
            f"--key-interval={key_interval}",
            f"--width={width}",
            f"--height={height}",
            *([f"--user={user}", f"--password={password or ''}"] if user is not None else []),
        ]
        self._process: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None
        # The server's last lines (GStreamer's warnings), read so that its pipe never fills.
        self.output: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return None if self._process is None else self._process.pid

    def url(self, user: str | None = None, password: str | None = None, path: str = "/cam") -> str:
        """The stream's URL, with these credentials (default: the server's own), encoded."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        login = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user else ""
        return f"rtsp://{login}{self.host}:{self.port}{path}"

    def start(self) -> RtspServer:
        """Start the server; returns once it listens (:attr:`port` set), else raises
        :class:`RuntimeError` with what it said."""
        process = self._process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVE), f"--host={self.host}", f"--port={self.port}", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
                if line.startswith("listening on "):
                    self.port = int(line.split()[-1])
                    self._drain = threading.Thread(
                        target=self._keep_output,
                        args=(process.stdout,),
                        name=f"rtsp-server-{self.port}",
                        daemon=True,
                    )
                    self._drain.start()
                    return self
                if not line:
                    break
                self.output.append(line.rstrip())
        self.stop()
        said = f": {self.output[-1]}" if self.output else ""
        raise RuntimeError(f"the RTSP server did not start{said}")

    def _keep_output(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line.rstrip())

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); nothing of it is left."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.join(5)  # the pipe's end is near once the process is gone
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
