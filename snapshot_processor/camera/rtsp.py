"""Stills from a camera's RTSP stream: on demand, or from a warm stream kept open
(:mod:`snapshot_processor.camera.stream` decodes; it is loaded with the first such camera)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, urlsplit

from snapshot_processor.camera import pyav
from snapshot_processor.camera.base import CameraClient, Request
from snapshot_processor.camera.errors import CameraError, CameraVendorError
from snapshot_processor.camera.settings import CameraSettings
from snapshot_processor.camera.spec import CameraSpec, Still, safe_url

__all__ = ["RTSP_PATHS", "RtspClient", "stream_url"]

# The main stream of the known vendors' first channel.
RTSP_PATHS = {
    "hikvision": "/Streaming/Channels/101",
    "dahua": "/cam/realmonitor?channel=1&subtype=0",
    "reolink": "/h264Preview_01_main",
    "foscam": "/videoMain",
}
DEFAULT_RTSP_PORT = 554


def stream_url(spec: CameraSpec) -> tuple[str, str]:
    """The stream's URL with the camera's credentials, and the same without them (to show)."""
    if spec.vendor == "rtsp":
        parts = urlsplit(spec.url or "")
        netloc = parts.netloc.rpartition("@")[2]
        if spec.connect_to:  # a host checked against CAMERA_NETWORKS, not looked up again
            address = spec.connect_to[0]
            netloc = f"[{address}]" if ":" in address else address
            netloc += f":{parts.port}" if parts.port else ""
        base, path = f"{parts.scheme}://", parts.path + (f"?{parts.query}" if parts.query else "")
    else:
        # A trigger's host goes to the address it was checked at, never looked up again.
        address = spec.connect_to[0] if spec.connect_to else spec.host
        host = f"[{address}]" if ":" in address else address
        netloc = f"{host}:{spec.rtsp_port or default_rtsp_port(spec)}"
        base, path = "rtsp://", RTSP_PATHS.get(spec.vendor, "/")
    shown = safe_url(f"{base}{netloc}{path}")
    login = f"{quote(spec.user, safe='')}:{quote(spec.password, safe='')}@" if spec.user else ""
    return f"{base}{login}{netloc}{path}", shown


def default_rtsp_port(spec: CameraSpec) -> int:
    """Foscam serves RTSP on its HTTP port; the others on 554."""
    return spec.port if spec.vendor == "foscam" else DEFAULT_RTSP_PORT


class RtspClient(CameraClient):
    """A camera's stills from its RTSP stream: ``OUTPUT_n_VENDOR=rtsp``, or a known vendor's
    stream path with ``OUTPUT_n_RTSP_MODE``; on demand or warm."""

    vendor = "rtsp"
    status_call = "a frame of the RTSP stream"

    def __init__(
        self, spec: CameraSpec, on_change: Callable[[CameraError | None], None] | None = None
    ) -> None:
        super().__init__(spec)
        why = pyav.missing()
        if why is not None:  # an ONVIF camera that named only a stream, found at run time
            raise CameraVendorError(f"{spec.key}: the camera streams: {why}", camera=spec.key)
        from snapshot_processor.camera import stream  # PyAV, with the first such camera

        self._stream = stream
        self._url, shown = stream_url(spec)
        self._failure = stream.StreamFailure(spec.key, shown, spec.timeout, spec.rtsp_transport)
        self._warm: stream.WarmStream | None = None
        if spec.rtsp_mode == "warm":
            self._warm = stream.WarmStream(
                self._url,
                self._failure,
                pre_trigger=spec.pre_trigger,
                policy=CameraSettings.STREAM_RETRY,
                on_change=on_change or (lambda error: None),
            )

    def _attempt(self, status: Request | None = None) -> Still | CameraError:
        try:
            return self.still()
        except CameraError as exc:
            return exc.with_traceback(None)

    def still(self, timeout: float | None = None) -> Still:
        """The newest frame: from the warm stream, else from a stream opened for it; within
        ``timeout`` (default: the camera's) of the stream's answer."""
        timeout = self._spec.timeout if timeout is None else timeout
        if self._warm is not None:
            return self._warm.still(timeout)
        return self._stream.grab(self._url, timeout, self._failure)

    def before(self, moment: float) -> list[Still]:
        return [] if self._warm is None else self._warm.before(moment)

    @property
    def streaming(self) -> bool:
        return self._warm is not None

    def close(self, *, wait: bool = True) -> None:
        if self._warm is not None:
            self._warm.stop()
        super().close(wait=wait)
        if wait:
            self.join(self._spec.timeout + 1)

    def join(self, timeout: float) -> None:
        if self._warm is not None:
            self._warm.join(timeout)

    def __repr__(self) -> str:
        return f"<RtspClient {self.key!r} {self._failure.shown}>"
