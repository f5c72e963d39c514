"""Which camera a trigger names, how to reach it, one client and one breaker per camera."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import unquote, urlsplit

from prometheus_client import Counter, Gauge, Histogram

from pylib.breaker import BreakerState, CircuitBreaker
from snapshot_processor.camera.address import CameraAddress, parse_device_params
from snapshot_processor.camera.base import CameraClient
from snapshot_processor.camera.clients import OnvifClient, make_client
from snapshot_processor.camera.errors import (
    CameraConnectionError,
    CameraError,
    CameraUnavailableError,
)
from snapshot_processor.camera.networks import AddressRefusedError, CameraNetworks
from snapshot_processor.camera.spec import URL_VENDORS, CameraSpec, Still
from snapshot_processor.config import Device

DEFAULT_PORTS = {"http": 80, "https": 443}
FOSCAM_PORT = 88
STREAMS_END_SECONDS = 0.5  # at close, for every warm stream's thread together

log = logging.getLogger(__name__)

FETCH_SECONDS = Histogram(
    "camera_fetch_seconds",
    "Time a camera took to give a snapshot (retries included), successful fetches only",
    ["camera"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
BREAKER_STATE = Gauge(
    "camera_breaker_state",
    "Each camera's circuit breaker: 0 closed, 1 half-open (one probe), 2 open (not asked)",
    ["camera"],
)
BREAKER_OPENED = Counter(
    "camera_breaker_opened_total", "Times a camera's breaker opened", ["camera"]
)


class CameraConfigError(ValueError):
    """Not enough is known to reach a camera (no address configured nor sent)."""


class CameraAddressRefusedError(CameraConfigError):
    """A trigger named a camera address outside ``CAMERA_NETWORKS``: nothing is sent to it."""

    reason = "address_refused"


class CameraObserver(Protocol):
    """Told of every snapshot's outcome, on the thread that fetched it."""

    def record_success(self, key: str) -> None: ...

    def record_failure(self, key: str, error: BaseException) -> None: ...


class CameraRegistry:
    """The configured camera outputs, a cache of clients keyed by their full spec, and a
    circuit breaker per camera. Thread-safe; after :meth:`close` it makes no new clients.

    A changed spec gets a new client (the old one closes once its call ends); whoever starts
    a fetch asks :meth:`admits` first. A host from a trigger must lie in ``networks``."""

    def __init__(
        self,
        cameras: Iterable[Device],
        *,
        timeout: float = 5.0,
        retries: int = 2,
        breaker_failures: int = 3,
        breaker_seconds: float = 30.0,
        networks: CameraNetworks | None = None,
    ) -> None:
        self.devices = {device.key: device for device in cameras}
        self.networks = CameraNetworks.default() if networks is None else networks
        self.timeout = timeout
        self.retries = retries
        self._clients: dict[str, CameraClient] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.observer: CameraObserver | None = None
        self._breakers = {
            key: CircuitBreaker(
                failures=breaker_failures,
                cool_down=breaker_seconds,
                on_change=functools.partial(self._breaker_changed, key),
            )
            for key in self.devices
        }
        self._breaker_specs: dict[str, CameraSpec] = {}  # what each breaker counts failures of
        for key in self.devices:
            BREAKER_STATE.labels(key).set(BreakerState.CLOSED)

    @property
    def keys(self) -> dict[str, str]:
        """Lower-cased key -> configured key, for matching triggers."""
        return {key.strip().lower(): key for key in self.devices}

    def spec(self, key: str, device_params: str | None) -> CameraSpec:
        """The camera's spec: configuration first, the trigger's ``device_params`` for the rest."""
        device = self.devices[key]
        sent = None
        if device_params:
            try:
                sent = parse_device_params(device_params)
            except ValueError as exc:
                if device.ADDRESS is None or device.PASSWORD is None:
                    raise CameraConfigError(f"{key}: device_params unusable: {exc}") from None
        if device.VENDOR == "rtsp":  # all in its URL: a trigger's address counts for nothing
            host, port = "", DEFAULT_PORTS["http"]
        elif device.ADDRESS:
            host, _, port_text = device.ADDRESS.partition(":")
            port = int(port_text) if port_text else self._default_port(device)
        elif sent is not None:
            host, port = sent.host, sent.port
        elif device.VENDOR in URL_VENDORS and device.URL:
            host, port = "", DEFAULT_PORTS[device.SCHEME]
        else:
            raise CameraConfigError(
                f"{key}: no address: set OUTPUT_n_ADDRESS or send device_params"
            )
        user, password = (sent.user, sent.password) if sent else ("", "")
        if device.VENDOR == "rtsp":  # the stream URL's own user and password come first
            parts = urlsplit(device.URL or "")
            user, password = unquote(parts.username or user), unquote(parts.password or password)
        user = device.USER if device.USER is not None else user
        if device.PASSWORD is not None:
            password = device.PASSWORD.get_secret_value()
        try:
            return self._made(key, device, host, port, user, password, sent)
        except ValueError as exc:  # a URL the settings' checks let through, say
            raise CameraConfigError(str(exc)) from None

    def _made(
        self,
        key: str,
        device: Device,
        host: str,
        port: int,
        user: str,
        password: str,
        sent: CameraAddress | None,
    ) -> CameraSpec:
        return CameraSpec(
            key=key,
            vendor=device.VENDOR,
            host=host,
            port=port,
            user=user,
            password=password,
            url=device.URL,
            auth=device.AUTH,
            scheme=device.SCHEME,
            timeout=self.timeout,
            retries=self.retries,
            rtsp_mode=device.rtsp_mode,
            rtsp_transport=device.RTSP_TRANSPORT,
            rtsp_port=sent.rtsp_port if sent and device.VENDOR != "rtsp" else None,
            pre_trigger=device.PRE_TRIGGER_SECONDS,
        )

    def known_spec(self, key: str) -> CameraSpec | None:
        """How to reach the camera: its configuration, else the last trigger's (None: unknown)."""
        with contextlib.suppress(CameraConfigError):
            return self.spec(key, None)
        with self._lock:
            client = self._clients.get(key)
        return client.spec if client is not None else None

    @staticmethod
    def _default_port(device: Device) -> int:
        return FOSCAM_PORT if device.VENDOR == "foscam" else DEFAULT_PORTS[device.SCHEME]

    def client(self, key: str, device_params: str | None) -> CameraClient:
        """The camera's client, reused while its spec stays; with no address sent, the last one."""
        try:
            spec = self.spec(key, device_params)
        except CameraConfigError:
            if device_params:
                raise
            with self._lock:
                last = self._clients.get(key)
            if last is None or last.closed:
                raise
            return last
        spec = self._checked(spec)
        with self._lock:
            if self._closed:
                raise CameraConnectionError(
                    f"{key}: camera registry is closed", camera=key, retryable=False
                )
            old = self._clients.get(key)
            if old is not None and old.spec == spec:
                return old
            client = self._clients[key] = make_client(
                spec, functools.partial(self._stream_changed, key)
            )
            if spec.connect_to and isinstance(client, OnvifClient):
                client.networks = self.networks
        if old is not None:
            old.close(wait=False)  # outside the lock; its call in progress finishes first
        return client

    def warm_up(self) -> None:
        """Open the warm RTSP streams whose address is configured (the others open with their
        first trigger); a camera that fails reconnects on its own thread."""
        for key, device in self.devices.items():
            if device.rtsp_mode != "warm":
                continue
            try:
                self.client(key, None).prepare()
            except CameraConfigError:
                pass  # its address comes with its first trigger
            except CameraError as exc:
                log.warning("%s: its stream is not opened now: %s", key, exc)

    def streaming(self, key: str) -> bool:
        """Whether the camera's warm stream is open or opening (it tells its own state)."""
        with self._lock:
            client = self._clients.get(key)
        return client is not None and client.streaming

    def before(self, key: str, moment: float) -> list[Still]:
        """The camera's pre-trigger stills before ``moment`` (none unless its stream is warm)."""
        with self._lock:
            client = self._clients.get(key)
        return [] if client is None else client.before(moment)

    def _stream_changed(self, key: str, error: CameraError | None) -> None:
        if self._closed:
            return
        breaker = self._breakers.get(key)
        if error is None and breaker is not None and breaker.state is not BreakerState.CLOSED:
            log.info("camera %r: its stream is back", key)
            breaker.reset()  # its triggers are taken again at once
            BREAKER_STATE.labels(key).set(BreakerState.CLOSED)
        if self.observer is None:
            return
        if error is None:
            self.observer.record_success(key)
        else:
            self.observer.record_failure(key, error)

    def _checked(self, spec: CameraSpec) -> CameraSpec:
        """``spec`` bound to its trigger host's checked addresses, or CameraAddressRefusedError."""
        if self.devices[spec.key].ADDRESS is not None or not spec.host:
            return spec  # configured (a generic URL without a host too): not bounded
        try:
            addresses = self.networks.resolve(spec.host, spec.port)
        except AddressRefusedError as exc:
            raise CameraAddressRefusedError(f"{spec.key}: {exc}") from None
        except (OSError, UnicodeError):
            raise CameraConnectionError(
                f"{spec.key}: host name does not resolve", camera=spec.key
            ) from None
        return dataclasses.replace(spec, connect_to=addresses)

    def breaker(self, key: str) -> CircuitBreaker:
        """The camera's circuit breaker (``KeyError`` for a camera not configured)."""
        return self._breakers[key]

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return dict(self._breakers)

    def held_off(self, key: str) -> str | None:
        """When the camera's breaker lets it be asked again (``retrying in 12 s``), while it
        holds it off; None once the cool-down is over (the next trigger tries it)."""
        breaker = self._breakers[key]
        state = breaker.state
        if state is BreakerState.HALF_OPEN:
            return "trying it again now"
        wait = breaker.retry_in()
        return f"retrying in {wait:.0f} s" if state is BreakerState.OPEN and wait > 0 else None

    def admits(self, key: str, device_params: str | None) -> bool:
        """Whether to fetch from the camera now, as its breaker says. A trigger naming
        another address or password than the failures were counted for resets it."""
        breaker = self._breakers.get(key)
        if breaker is None:
            return True
        try:
            spec = self.spec(key, device_params)
        except CameraConfigError:
            return True  # the fetch fails with the reason, and settles the trigger
        with self._lock:
            changed = self._breaker_specs.get(key, spec) != spec
            self._breaker_specs[key] = spec
        if changed and breaker.state is not BreakerState.CLOSED:
            log.info("camera %r: another address or password than the one failing", key)
            breaker.reset()
            BREAKER_STATE.labels(key).set(BreakerState.CLOSED)
        elif changed:
            breaker.reset()
        return breaker.allow()

    def snapshot(self, key: str, device_params: str | None) -> bytes:
        """One JPEG, its outcome told to the breaker; :class:`CameraUnavailableError` if open."""
        return self.capture(key, device_params).jpeg

    def capture(self, key: str, device_params: str | None) -> Still:
        """As :meth:`snapshot`, with the time the image was taken."""
        breaker = self._breakers.get(key)
        if breaker is not None and breaker.state is BreakerState.OPEN:
            raise CameraUnavailableError(
                f"{key}: not asked: failing ({breaker.last_error}); "
                f"tried again in {breaker.retry_in():.0f} s",
                camera=key,
            )
        started = time.monotonic()
        try:
            image = self._capture(key, device_params)
        except CameraConfigError:
            raise  # not the camera's failure: nothing was asked of it
        except Exception as exc:
            if not self._closed:  # a call cut short by close() says nothing
                if breaker is not None:
                    breaker.failed(
                        exc.summary if isinstance(exc, CameraError) else type(exc).__name__
                    )
                if self.observer is not None:
                    self.observer.record_failure(key, exc)
            raise
        FETCH_SECONDS.labels(key).observe(time.monotonic() - started)
        if breaker is not None:
            breaker.succeeded()
        if self.observer is not None:
            self.observer.record_success(key)
        return image

    def _breaker_changed(self, key: str, state: BreakerState) -> None:
        BREAKER_STATE.labels(key).set(state)
        breaker = self._breakers[key]
        if state is BreakerState.OPEN:
            BREAKER_OPENED.labels(key).inc()
            log.warning(
                "camera %r failing (%s), %d time(s) in a row: its triggers are settled "
                "without a snapshot for %.0f s, then one is tried",
                key,
                breaker.last_error,
                breaker.failures,
                breaker.cool_down,
            )
        elif state is BreakerState.HALF_OPEN:
            log.info("camera %r: trying it again after %.0f s", key, breaker.cool_down)
        else:
            log.info("camera %r answers again", key)

    def _capture(self, key: str, device_params: str | None) -> Still:
        """One image from the camera, asked again once if its client was replaced meanwhile."""
        client = self.client(key, device_params)
        try:
            return client.capture()
        except CameraError:
            if not client.closed or self._closed:
                raise
        log.info("%s: its client was replaced during the call; trying the new one", key)
        return self.client(key, device_params).capture()

    def close(self, *, wait: bool = True) -> None:
        """Close every client; back-off pauses end at once; ``wait`` waits for calls in progress."""
        with self._lock:
            self._closed = True
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close(wait=wait)
        # Warm streams were all told to end first; a live one ends within a frame.
        deadline = time.monotonic() + STREAMS_END_SECONDS
        for client in clients:
            client.join(max(0.0, deadline - time.monotonic()))
