"""What the clients need to know about one camera."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit

from pylib.retry import RetryPolicy
from snapshot_processor.camera.address import CameraAddress
from snapshot_processor.camera.settings import CameraSettings

__all__ = ["AUTH_MODES", "SCHEMES", "CameraSpec", "Still", "safe_url"]

AUTH_MODES = ("basic", "digest", "none")
SCHEMES = ("http", "https")
RTSP_MODES = ("off", "on_demand", "warm")
# Vendors whose address is in their URL, not ADDRESS or the trigger's device_params.
URL_VENDORS = ("generic", "rtsp")


def safe_url(url: str) -> str:
    """The URL with user-info and query values masked, for reprs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{pair.partition('=')[0]}=***" for pair in parts.query.split("&") if pair)
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


MAX_BACKOFF = CameraSettings.SNAPSHOT_RETRY.maximum


@dataclass(frozen=True)
class Still:
    """One frame as a JPEG, and the Unix time it came."""

    taken: float
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class CameraSpec:
    """One camera: vendor, address, credentials and fetch policy. ``url`` is for the
    ``generic`` and ``rtsp`` vendors, ``auth`` for ``generic``; ``timeout`` bounds each attempt
    in seconds; ``retries`` counts attempts after the first; ``connect_to`` are the addresses
    ``host`` was checked at: connections go there, in order, never looking ``host`` up.
    ``rtsp_mode`` other than ``off`` takes stills from the RTSP stream (``rtsp_port``, else
    the vendor's), ``warm`` keeping ``pre_trigger`` seconds of stills before a trigger."""

    key: str
    vendor: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    url: str | None = None
    auth: str = "digest"
    scheme: str = "http"
    timeout: float = 5.0
    retries: int = 2
    backoff: float = CameraSettings.SNAPSHOT_RETRY.first
    verify_tls: bool = True
    connect_to: tuple[str, ...] = ()
    rtsp_mode: str = "off"
    rtsp_transport: str = "tcp"
    rtsp_port: int | None = None
    pre_trigger: float = 0.0

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("camera spec: key is empty")
        from snapshot_processor.camera.clients import VENDORS  # the registry imports this module

        if self.vendor not in VENDORS:
            raise ValueError(f"{self.key}: unknown camera vendor {self.vendor!r}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"{self.key}: unknown auth mode {self.auth!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"{self.key}: scheme must be http or https")
        if self.vendor not in URL_VENDORS and not self.host:
            raise ValueError(f"{self.key}: host is empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"{self.key}: port {self.port} is out of range 1-65535")
        for address in self.connect_to:
            try:
                ipaddress.ip_address(address)  # never a name to look up again
            except ValueError:
                raise ValueError(f"{self.key}: connect_to holds a non-address") from None
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"{self.key}: timeout must be a positive number of seconds")
        if self.retries < 0:
            raise ValueError(f"{self.key}: retries must not be negative")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ValueError(f"{self.key}: backoff must not be negative")
        if self.vendor == "generic":
            if not self.url:
                raise ValueError(f"{self.key}: a generic camera needs a snapshot url")
            parts = urlsplit(self.url)
            if parts.scheme not in SCHEMES or not parts.netloc:
                raise ValueError(f"{self.key}: snapshot url must be http(s)://host/path")
        if self.vendor == "rtsp":
            parts = urlsplit(self.url or "")
            if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
                raise ValueError(f"{self.key}: an rtsp camera needs an rtsp://host/path url")
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ValueError(f"{self.key}: RTSP transport must be tcp or udp")
        if self.rtsp_mode not in RTSP_MODES:
            raise ValueError(f"{self.key}: unknown RTSP mode {self.rtsp_mode!r}")
        if self.pre_trigger and self.rtsp_mode != "warm":
            raise ValueError(f"{self.key}: pre-trigger stills need the warm RTSP mode")

    @property
    def retry_policy(self) -> RetryPolicy:
        """This camera's attempts: ``SNAPSHOT_RETRY`` from ``backoff``, ``retries`` retries."""
        return replace(
            CameraSettings.SNAPSHOT_RETRY,
            first=self.backoff,
            maximum=max(self.backoff, MAX_BACKOFF),
            attempts=self.retries + 1,
        )

    def __repr__(self) -> str:
        shown: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        shown.update(password="***", url=safe_url(self.url) if self.url else None)
        return f"CameraSpec({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    @classmethod
    def from_address(
        cls,
        key: str,
        vendor: str,
        address: CameraAddress,
        **options: object,
    ) -> CameraSpec:
        return cls(
            key=key,
            vendor=vendor,
            host=address.host,
            port=address.port,
            user=address.user,
            password=address.password,
            **options,  # type: ignore[arg-type]
        )
