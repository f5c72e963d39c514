"""Camera client errors: messages in our own words, never a lower layer's (URLs hold passwords)."""

from __future__ import annotations


class CameraError(Exception):
    """A snapshot failed: ``reason`` labels counters, ``retryable`` says if a retry may help."""

    reason: str = "camera"
    default_retryable: bool = False
    words: str = "failed"

    def __init__(self, message: str, *, camera: str = "", retryable: bool | None = None) -> None:
        super().__init__(message)
        self.camera = camera
        self.retryable = self.default_retryable if retryable is None else retryable

    @property
    def summary(self) -> str:
        """The problem in a few words, free of addresses and credentials."""
        return self.words


class CameraAuthError(CameraError):
    """The camera refused the user name or password (never retried)."""

    reason = "auth"
    words = "user name or password refused"


class CameraTimeoutError(CameraError):
    """The camera did not answer within the timeout (retried)."""

    reason = "timeout"
    default_retryable = True
    words = "timed out"


class CameraHTTPError(CameraError):
    """The camera answered with an HTTP error status (5xx, 408 and 429 are retried)."""

    reason = "http"

    def __init__(
        self, message: str, *, status: int, camera: str = "", retryable: bool | None = None
    ) -> None:
        if retryable is None:
            retryable = status >= 500 or status in (408, 429)
        super().__init__(message, camera=camera, retryable=retryable)
        self.status = status

    @property
    def summary(self) -> str:
        return f"HTTP {self.status}"


class CameraBadImageError(CameraError):
    """The camera answered, but not with a whole JPEG (retried: cameras send half frames)."""

    reason = "bad_image"
    default_retryable = True
    words = "no whole JPEG"


class CameraConnectionError(CameraError):
    """The camera could not be reached or dropped the connection (retried)."""

    reason = "connection"
    default_retryable = True
    words = "connection failed"


class CameraVendorError(CameraError):
    """The camera reported an error in its own format (retried only if its code is transient)."""

    reason = "vendor"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        camera: str = "",
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, camera=camera, retryable=retryable)
        self.code = code

    @property
    def summary(self) -> str:
        return "camera reported an error" if self.code is None else f"camera reported {self.code}"


class CameraUnavailableError(CameraError):
    """Not asked at all: the camera failed too often in a row and its breaker is open."""

    reason = "breaker_open"
    words = "not asked while its breaker is open"
