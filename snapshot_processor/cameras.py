"""Which camera a trigger names, how to reach it, and one reusable client per camera."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from snapshot_processor.camera import (
    CameraClient,
    CameraSpec,
    make_client,
    parse_device_params,
)
from snapshot_processor.config import Device

DEFAULT_PORTS = {"http": 80, "https": 443}
FOSCAM_PORT = 88


class CameraConfigError(ValueError):
    """Not enough is known to reach a camera (no address configured nor sent)."""


class CameraRegistry:
    """The configured camera outputs, and a cache of clients keyed by their full spec.

    A spec that changes (a trigger sends a new password) gets a new client; the old one
    is closed. Thread-safe: fetches for several cameras run at once.
    """

    def __init__(
        self, cameras: Iterable[Device], *, timeout: float = 5.0, retries: int = 2
    ) -> None:
        self.devices = {device.key: device for device in cameras}
        self.timeout = timeout
        self.retries = retries
        self._clients: dict[str, CameraClient] = {}
        self._lock = threading.Lock()

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
        if device.ADDRESS:
            host, _, port_text = device.ADDRESS.partition(":")
            port = int(port_text) if port_text else self._default_port(device)
        elif sent is not None:
            host, port = sent.host, sent.port
        elif device.VENDOR == "generic" and device.URL:
            host, port = "", DEFAULT_PORTS[device.SCHEME]
        else:
            raise CameraConfigError(
                f"{key}: no address: set OUTPUT_n_ADDRESS or send device_params"
            )
        user = device.USER if device.USER is not None else (sent.user if sent else "")
        if device.PASSWORD is not None:
            password = device.PASSWORD.get_secret_value()
        else:
            password = sent.password if sent else ""
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
        )

    @staticmethod
    def _default_port(device: Device) -> int:
        return FOSCAM_PORT if device.VENDOR == "foscam" else DEFAULT_PORTS[device.SCHEME]

    def client(self, key: str, device_params: str | None) -> CameraClient:
        """A client for the camera, reused while its spec stays the same."""
        spec = self.spec(key, device_params)
        with self._lock:
            client = self._clients.get(key)
            if client is not None and client.spec == spec:
                return client
            if client is not None:
                client.close()
            client = make_client(spec)
            self._clients[key] = client
            return client

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
