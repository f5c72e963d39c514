"""Camera health: each configured camera probed on a schedule with its vendor's cheap call,
plus the snapshot path's outcomes, one status per camera. Probes use their own threads and
clients (a hanging probe must not hold the snapshot path's per-camera lock), at most one
per camera at a time; only changes are logged."""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from pylib.observe.logs import printable
from pylib.observe.redact import redact
from pylib.runtime.health import Health
from pylib.runtime.worker import RestartBudget, Worker
from snapshot_processor.camera.base import CameraClient
from snapshot_processor.camera.clients import make_client, status_call
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraConnectionError,
    CameraError,
    CameraTimeoutError,
    CameraUnavailableError,
)
from snapshot_processor.camera.registry import CameraRegistry

__all__ = [
    "CAMERA_LAST_SEEN",
    "CAMERA_PROBES",
    "CAMERA_UP",
    "CameraProber",
    "CameraStatus",
    "Reason",
    "classify",
]

log = logging.getLogger(__name__)

MAX_PROBE_WORKERS = 8  # probes at once, each bounded by its timeout: a round fits the interval
STOP_JOIN_SECONDS = 0.5  # for the (daemon) probe threads; a stuck one ends within its timeout

CAMERA_UP = Gauge(
    "camera_up", "1 while a camera answers (last probe or snapshot), 0 while not", ["camera"]
)
CAMERA_LAST_SEEN = Gauge(
    "camera_last_seen_timestamp_seconds",
    "Unix time a camera last answered a probe or gave a snapshot",
    ["camera"],
)
CAMERA_PROBES = Counter(
    "camera_probes_total",
    "Camera probes by outcome: ok, unreachable, wrong_credentials, timeout, bad_answer, error",
    ["camera", "outcome"],
)
CAMERA_DOWN = Counter(
    "camera_down_total", "Times a camera went down (or failed for another reason)", ["camera"]
)


class Reason(enum.StrEnum):
    """Why a camera is down."""

    UNREACHABLE = "unreachable"
    CREDENTIALS = "wrong credentials"
    TIMEOUT = "timeout"
    BAD_ANSWER = "bad answer"

    @property
    def label(self) -> str:
        return self.value.replace(" ", "_")


def classify(error: BaseException) -> Reason | None:
    """Why ``error`` says a camera is down; None when it says nothing about the camera."""
    if isinstance(error, CameraUnavailableError) or not isinstance(error, CameraError):
        return None
    if isinstance(error, CameraAuthError):
        return Reason.CREDENTIALS
    if isinstance(error, CameraTimeoutError):
        return Reason.TIMEOUT
    if isinstance(error, CameraConnectionError):
        return Reason.UNREACHABLE
    return Reason.BAD_ANSWER


def iso_time(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class CameraStatus:
    """One camera's health as last observed (times in unix seconds). ``up`` is None until
    first probed or fetched from; ``last_error`` stays after it comes back; ``since`` is
    when the state began; ``last_failure`` when it last failed (a later failure of a camera
    down already is news to whoever asked for it); ``probe_call`` is None while the
    address is unknown or probing off."""

    key: str
    up: bool | None
    reason: Reason | None
    last_error: str | None
    last_seen: float | None
    last_probe: float | None
    since: float | None
    last_failure: float | None
    probe_call: str | None

    @property
    def state(self) -> str:
        return "unknown" if self.up is None else "up" if self.up else "down"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO-8601 UTC (None when never), ``reason`` as its text."""

        def when(value: float | None) -> str | None:
            return iso_time(value) if value is not None else None

        return {
            "key": self.key,
            "state": self.state,
            "up": self.up,
            "reason": self.reason.value if self.reason else None,
            "last_error": self.last_error,
            "last_seen": when(self.last_seen),
            "last_probe": when(self.last_probe),
            "since": when(self.since),
            "last_failure": when(self.last_failure),
            "probe_call": self.probe_call,
        }


@dataclass
class _Record:
    """The mutable status of one camera, guarded by the prober's lock."""

    up: bool | None = None
    reason: Reason | None = None
    last_error: str | None = None
    last_seen: float | None = None
    last_probe: float | None = None
    since: float | None = None
    last_failure: float | None = None


class CameraProber(Worker):
    """Probes every configured camera each ``interval`` seconds (0: never; the first round
    at start) and keeps each one's :class:`CameraStatus`. The public methods are safe from
    any thread; stopping returns within about :data:`STOP_JOIN_SECONDS` even while probes hang."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        cameras: CameraRegistry,
        interval: float,
        workers: int = MAX_PROBE_WORKERS,
        clock: Callable[[], float] = time.time,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        if interval < 0:
            raise ValueError("interval must not be negative")
        self.cameras = cameras
        self.interval = interval
        self._clock = clock
        self._keys = list(cameras.devices)
        self._workers = max(1, min(workers, len(self._keys)))
        self._lock = threading.Lock()
        self._records = {key: _Record() for key in self._keys}
        self._clients: dict[str, CameraClient] = {}
        self._in_flight: set[str] = set()
        self._jobs: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._pool: list[threading.Thread] = []
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._due = 0.0

    def health(self) -> Health:
        """Cameras down are warnings (not the daemon's fault); each camera's state."""
        health = super().health()
        health.detail["cameras"] = {key: status.as_dict() for key, status in self.status().items()}
        return health

    def status(self) -> dict[str, CameraStatus]:
        """Every configured camera's status, by key (a consistent copy)."""
        with self._lock:
            records = {key: _Record(**vars(record)) for key, record in self._records.items()}
        return {
            key: CameraStatus(key=key, probe_call=self._probe_call(key), **vars(record))
            for key, record in records.items()
        }

    def record_success(self, key: str) -> None:
        """The snapshot path got an image from the camera: it is up."""
        self._record(key, None, None, probed=False)

    def record_failure(self, key: str, error: BaseException | Reason, detail: str = "") -> None:
        """The snapshot path failed: a camera error (classified, its text kept), or a
        :class:`Reason` with ``detail``; an error saying nothing about the camera is ignored."""
        if isinstance(error, Reason):
            self._record(key, error, detail or error.value, probed=False)
            return
        reason = classify(error)
        if reason is not None:
            self._record(key, reason, str(error), probed=False)

    def probe_now(self) -> None:
        """Probe every camera now (those not already being probed), then on schedule."""
        self._wake.set()

    def troubles(self) -> list[str]:
        # A camera its breaker holds off is the snapshot stage's to name, with when it is
        # asked again: one line per camera in health.
        return [
            f"camera '{printable(status.key)}' down since "
            f"{iso_time(status.since) if status.since is not None else '?'}: {status.reason.value}"
            for status in self.status().values()
            if status.up is False
            and status.reason is not None
            and self.cameras.held_off(status.key) is None
        ]

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def on_thread_open(self) -> None:
        self._closing.clear()
        # Plain threads, not Workers: _probe_loop catches every failure, so they end at close.
        for number in range(1, self._workers + 1):
            thread = threading.Thread(
                target=self._probe_loop, name=f"{self.name}-{number}", daemon=True
            )
            thread.start()
            self._pool.append(thread)
        self._due = time.monotonic()  # the first round at start

    def work(self) -> None:
        while self.should_keep_running():
            forced = self._wake.is_set()
            self._wake.clear()
            if not self.should_keep_running():
                return
            now = time.monotonic()
            if forced or (self.interval and now >= self._due):
                if self.interval:
                    self._due = now + self.interval
                with self._lock:
                    due = [key for key in self._keys if key not in self._in_flight]
                    self._in_flight.update(due)
                for key in due:
                    self._jobs.put(key)
            timeout = max(0.0, self._due - time.monotonic()) if self.interval else None
            self._wake.wait(timeout)

    def on_thread_close(self) -> None:
        self._closing.set()
        for _ in self._pool:
            self._jobs.put(None)
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close(wait=False)  # a probe under way closes its session when it ends
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for thread in self._pool:
            thread.join(max(0.0, deadline - time.monotonic()))
        if still := [thread.name for thread in self._pool if thread.is_alive()]:
            log.debug(
                "camera probes still waiting on a camera (%s); they end within its timeout", still
            )
        self._pool.clear()

    def _probe_loop(self) -> None:
        while True:
            key = self._jobs.get()
            if key is None:
                return
            try:
                self._probe(key)
            except Exception:  # a bug of ours, not the camera's state
                CAMERA_PROBES.labels(key, "error").inc()
                log.exception("probing camera %r failed", printable(key))
            finally:
                with self._lock:
                    self._in_flight.discard(key)

    def _probe(self, key: str) -> None:
        if self._closing.is_set():
            return
        client = self._client(key)
        if client is None:
            return  # no address known yet: it comes with the first trigger
        try:
            client.probe()
        except CameraError as exc:
            if self._closing.is_set():
                return  # cut short by stop: says nothing about the camera
            reason = classify(exc) or Reason.BAD_ANSWER
            CAMERA_PROBES.labels(key, reason.label).inc()
            self._record(key, reason, str(exc), probed=True)
            return
        CAMERA_PROBES.labels(key, "ok").inc()
        self._record(key, None, None, probed=True)

    def _client(self, key: str) -> CameraClient | None:
        """This prober's own client for the camera, made anew when its spec changed."""
        known = self.cameras.known_spec(key)
        if known is None or self.cameras.streaming(key):
            return None  # a warm stream tells its own state, without a second connection
        # One attempt: the state as it is; a stream opened for it alone.
        mode = "on_demand" if known.rtsp_mode == "warm" else known.rtsp_mode
        spec = dataclasses.replace(known, retries=0, rtsp_mode=mode, pre_trigger=0.0)
        with self._lock:
            if self._closing.is_set():
                return None
            old = self._clients.get(key)
            if old is not None and old.spec == spec:
                return old
            client = self._clients[key] = make_client(spec)
        if old is not None:
            old.close(wait=False)
        return client

    def _probe_call(self, key: str) -> str | None:
        spec = self.cameras.known_spec(key) if self.interval else None
        return None if spec is None else status_call(spec)

    def _record(self, key: str, reason: Reason | None, error: str | None, *, probed: bool) -> None:
        """Note an outcome (``reason`` None: the camera answered); log a change of state."""
        now = self._clock()
        with self._lock:
            record = self._records.get(key)
            if record is None:
                log.debug("camera health: %r is no configured camera", printable(key))
                return
            was_up, was_reason, since = record.up, record.reason, record.since
            if probed:
                record.last_probe = now
            if reason is None:
                record.last_seen = now
                record.up, record.reason = True, None
            else:
                record.last_error = redact(error or reason.value)
                record.up, record.reason = False, reason
                record.last_failure = now
            if record.up != was_up:
                record.since = now
            last_error = record.last_error
        if reason is None:
            CAMERA_UP.labels(key).set(1)
            CAMERA_LAST_SEEN.labels(key).set(now)
            if was_up is False:
                down_for = _duration(now - since) if since is not None else "a while"
                log.info("camera %r answers again, after %s down", printable(key), down_for)
            elif was_up is None:
                log.debug("camera %r answers", printable(key))
            return
        CAMERA_UP.labels(key).set(0)
        if was_up is False and was_reason == reason:
            return  # still down for the same reason: said already
        CAMERA_DOWN.labels(key).inc()
        log.warning(
            "camera %r still down, now: %s (%s)" if was_up is False else "camera %r down: %s (%s)",
            printable(key),
            reason.value,
            printable(last_error),
        )
