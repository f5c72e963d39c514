"""The loopback RTSP camera (tools/rtsp_camera.py): key frames as set, and its password kept."""

from __future__ import annotations

import time

import pytest

from tools.rtsp_camera import RtspServer, available

av = pytest.importorskip("av")

pytestmark = [
    pytest.mark.rtsp,
    pytest.mark.skipif(not available(), reason="GStreamer's RTSP server is not installed"),
]

OPEN = {"rtsp_transport": "tcp", "timeout": "5000000"}


def test_a_key_frame_comes_at_the_size_asked_and_a_wrong_password_is_401() -> None:
    with RtspServer("admin", "p@ss: w/rd", key_interval=15, fps=15) as server:
        started = time.monotonic()
        with av.open(server.url(), options=OPEN, timeout=(5, 5)) as container:
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = "NONKEY"
            frame = next(container.decode(stream))
        assert frame.key_frame
        assert (frame.width, frame.height) == (640, 360)
        assert stream.codec_context.name == "h264"
        assert time.monotonic() - started < 10
        with pytest.raises(av.error.HTTPUnauthorizedError):
            av.open(server.url(password="wrong"), options=OPEN, timeout=(5, 5))
