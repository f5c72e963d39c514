"""What every camera client shares: one HTTP session, a lock, retries, and safe errors."""

from __future__ import annotations

import http
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import quote

from requests.auth import AuthBase

from pylib.observe.redact import register_secret
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraBadImageError,
    CameraConnectionError,
    CameraError,
    CameraHTTPError,
    CameraTimeoutError,
)
from snapshot_processor.camera.jpeg import jpeg_problem
from snapshot_processor.camera.spec import CameraSpec, Still
from snapshot_processor.camera.transport import CameraSession, Reply, TransportError

__all__ = ["CameraClient", "Reply", "Request", "build_query"]

log = logging.getLogger(__name__)

USER_AGENT = "snapshot-processor"


def build_query(pairs: Sequence[tuple[str, str]]) -> str:
    """Encode query pairs with ``%20`` for a space (never ``+``) and every reserved
    character escaped, the way Foscam and Reolink firmware decode them."""
    return "&".join(f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in pairs)


@dataclass(frozen=True)
class Request:
    """One snapshot request: the real URL (may hold credentials) and a safe description."""

    url: str = field(repr=False)
    shown: str


class CameraClient:
    """The base of every vendor's client. Thread-safe. Timeouts, connection errors, 5xx and bad
    images are retried with doubling back-off; auth errors, other 4xx and most vendor errors not."""

    vendor: ClassVar[str] = ""
    path: ClassVar[str] = "/"
    secret_query_keys: ClassVar[frozenset[str]] = frozenset()
    status_call: ClassVar[str] = "a snapshot"

    def __init__(self, spec: CameraSpec) -> None:
        self._spec = spec
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._http = CameraSession(
            timeout=spec.timeout,
            verify_tls=spec.verify_tls,
            user_agent=USER_AGENT,
            pinned=(spec.host, spec.connect_to) if spec.connect_to else None,
        )
        self._auth = self._make_auth()
        register_secret(spec.password)  # log redaction masks it wherever it appears
        register_secret(quote(spec.password, safe=""))

    def _make_auth(self) -> AuthBase | None:
        """The HTTP auth to send (None: credentials travel some other way)."""
        return None

    def _query(self) -> list[tuple[str, str]]:
        """Query pairs for :attr:`path`, unencoded."""
        return []

    def _request(self) -> Request:
        return self._build_request(self.path, self._query())

    def _status_request(self) -> Request | None:
        """The vendor's cheap status call for :meth:`probe` (None: a probe takes a snapshot)."""
        return None

    def _check_status_body(self, reply: Reply, request: Request) -> None:
        """Raise the matching CameraError unless a 2xx status reply is the vendor's success."""

    def _build_request(self, path: str, pairs: Sequence[tuple[str, str]]) -> Request:
        host = f"[{self._spec.host}]" if ":" in self._spec.host else self._spec.host
        base = f"{self._spec.scheme}://{host}:{self._spec.port}{path}"
        if not pairs:
            return Request(url=base, shown=base)
        secret = self.secret_query_keys
        shown = "&".join(
            f"{quote(key, safe='')}={'***' if key in secret else quote(value, safe='')}"
            for key, value in pairs
        )
        return Request(url=f"{base}?{build_query(pairs)}", shown=f"{base}?{shown}")

    def _check_vendor_body(self, reply: Reply, request: Request) -> None:
        """Raise the vendor's error if the body is an error report rather than an image."""

    def prepare(self) -> None:
        """Get ready for the first snapshot now (an ONVIF camera's URIs); never raises."""

    def before(self, moment: float) -> list[Still]:
        """The stills kept from the seconds before ``moment`` (a warm RTSP stream's)."""
        return []

    @property
    def streaming(self) -> bool:
        """Whether a warm stream of its own tells the camera's state (it needs no probe)."""
        return False

    def join(self, timeout: float) -> None:
        """After :meth:`close`: wait up to ``timeout`` for a thread of its own to end."""

    @property
    def spec(self) -> CameraSpec:
        return self._spec

    @property
    def key(self) -> str:
        return self._spec.key

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def snapshot(self) -> bytes:
        """Fetch one snapshot and return its JPEG bytes, checked to decode; raises a
        :class:`CameraError` once the attempts are used up or the error is not worth retrying."""
        return self.capture().jpeg

    def capture(self) -> Still:
        """As :meth:`snapshot`, with the time the image was taken (a stream's frame may be
        older than its answer)."""
        try:
            with self._lock:
                if self._closed.is_set():
                    raise CameraConnectionError(
                        f"{self.key}: client is closed", camera=self.key, retryable=False
                    )
                policy = self._spec.retry_policy
                attempts = policy.attempts or 1
                attempt = 0
                while True:
                    attempt += 1
                    started = time.monotonic()
                    outcome = self._attempt()
                    if not isinstance(outcome, CameraError):
                        still = (
                            Still(time.time(), outcome) if isinstance(outcome, bytes) else outcome
                        )
                        log.debug(
                            "%s: snapshot of %d bytes in %.2f s (attempt %d)",
                            self.key,
                            len(still.jpeg),
                            time.monotonic() - started,
                            attempt,
                        )
                        return still
                    if not outcome.retryable or attempt >= attempts:
                        break
                    delay = policy.delay(attempt)
                    log.warning(
                        "%s: attempt %d of %d failed, retrying in %.2f s: %s",
                        self.key,
                        attempt,
                        attempts,
                        delay,
                        outcome,
                    )
                    # close() interrupts the pause so shutdown never waits for back-off.
                    if self._closed.wait(delay):
                        break
            raise outcome
        finally:
            self._close_session_if_idle()  # if a close(wait=False) left it to us

    def probe(self) -> None:
        """One cheap call (the vendor's status call, else a snapshot) that shows the camera
        answers and takes our credentials. One attempt, no retry; raises a :class:`CameraError`."""
        try:
            with self._lock:
                if self._closed.is_set():
                    raise CameraConnectionError(
                        f"{self.key}: client is closed", camera=self.key, retryable=False
                    )
                outcome = self._attempt(self._status_request())
        finally:
            self._close_session_if_idle()
        if isinstance(outcome, CameraError):
            raise outcome

    def _check_http_status(self, reply: Reply, request: Request) -> None:
        """Raise :class:`CameraAuthError` for 401/403, :class:`CameraHTTPError` for any non-2xx."""
        status = reply.status
        if status in (401, 403):
            raise CameraAuthError(
                f"{self.key}: HTTP {status} {_phrase(status)}: user name or password refused "
                f"(GET {request.shown})",
                camera=self.key,
            )
        if not 200 <= status < 300:
            raise CameraHTTPError(
                f"{self.key}: HTTP {status} {_phrase(status)} (GET {request.shown})",
                status=status,
                camera=self.key,
            )

    def close(self, *, wait: bool = True) -> None:
        """Close the HTTP session. Idempotent. A snapshot in progress ends its back-off at once
        and finishes its attempt; ``wait`` waits for that, else the session closes after it."""
        self._closed.set()
        if wait:
            with self._lock:
                self._http.close()
        else:
            self._close_session_if_idle()

    def _close_session_if_idle(self) -> None:
        if self._closed.is_set() and self._lock.acquire(blocking=False):
            try:
                self._http.close()
            finally:
                self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.key!r} "
            f"{self._spec.scheme}://{self._spec.host}:{self._spec.port}>"
        )

    def _scrub(self, text: str) -> str:
        """Mask this camera's password in text the camera sent us (error details)."""
        password = self._spec.password
        if len(password) >= 3:
            text = text.replace(password, "***").replace(quote(password, safe=""), "***")
        return text

    def _attempt(self, status: Request | None = None) -> bytes | Still | CameraError:
        """A snapshot, or with ``status`` that status call, its body checked as the vendor's."""
        request = self._request() if status is None else status
        reply = self._send(request)
        if isinstance(reply, CameraError):
            return reply
        try:
            # Checked for every body: a camera in trouble may answer 500 or 404 with a JPEG.
            self._check_http_status(reply, request)
            if status is not None:
                self._check_status_body(reply, request)
                return reply.body
            self._check_vendor_body(reply, request)
            if (problem := jpeg_problem(reply.body, reply.content_type)) is not None:
                raise CameraBadImageError(
                    f"{self.key}: {problem} (GET {request.shown})", camera=self.key
                )
        except CameraError as exc:
            # Drop the traceback: its frames hold the request, URL and credentials.
            return exc.with_traceback(None)
        return reply.body

    def _send(self, request: Request) -> Reply | CameraError:
        """GET the URL; the complete answer, or the error to raise (never raised here)."""
        log.debug("%s: GET %s", self.key, request.shown)
        try:
            return self._http.get(request.url, self._auth)
        except TransportError as exc:
            failure = exc
        if failure.timed_out:
            return CameraTimeoutError(
                f"{self.key}: timed out after {self._spec.timeout} s (GET {request.shown})",
                camera=self.key,
            )
        return (CameraBadImageError if failure.too_large else CameraConnectionError)(
            f"{self.key}: {failure} (GET {request.shown})",
            camera=self.key,
            retryable=not (failure.too_large or failure.lasting),
        )


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
