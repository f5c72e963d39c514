"""The tests' import point for the RTSP camera on loopback, which lives in ``tools/`` so
that the demo and the bench use it too."""

from tools.rtsp_camera import RtspServer, available

__all__ = ["RtspServer", "available"]
