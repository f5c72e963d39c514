"""The operations settings section: the HTTP server, metrics, recent events, health pings."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pylib.config.settings import CommaList, secret


class OpsSettings(BaseModel):
    """``HTTP_*``, ``RECENT_EVENTS``, ``METRICS_*``, and the health pings' settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The HTTP server: health, metrics, the API and the status page. Port 0: off.
    http_bind: str = Field("127.0.0.1", alias="HTTP_BIND", min_length=1)
    http_port: int = Field(8080, alias="HTTP_PORT", ge=0, le=65535)
    http_token: SecretStr | None = Field(None, alias="HTTP_TOKEN", json_schema_extra=secret())
    # Host names beside the loopback ones the server answers to (a reverse proxy's).
    http_allowed_hosts: CommaList = Field(default_factory=list, alias="HTTP_ALLOWED_HOSTS")
    recent_events: int = Field(500, alias="RECENT_EVENTS", ge=10, le=100_000)
    metrics_port: int = Field(0, alias="METRICS_PORT", ge=0, le=65535)
    # Loopback by default: the counters name cameras and are no business of the LAN.
    metrics_address: str = Field("127.0.0.1", alias="METRICS_ADDRESS", min_length=1)
    hc_ping_url: SecretStr | None = Field(None, alias="HC_PING_URL", json_schema_extra=secret())
    cronitor_monitor_key: SecretStr | None = Field(
        None, alias="CRONITOR_MONITOR_KEY", json_schema_extra=secret()
    )
    health_ping_interval: float = Field(60.0, alias="HEALTH_PING_INTERVAL", gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> OpsSettings:
        problems = []
        if self.http_port and not self.http_token and not is_loopback(self.http_bind):
            problems.append(
                f"HTTP_BIND is {self.http_bind}, beyond this machine, so the HTTP_TOKEN secret "
                "is needed (images and events are not for everyone on the network)"
            )
        if self.http_token is not None and len(self.http_token.get_secret_value()) < 16:
            problems.append("HTTP_TOKEN must be at least 16 characters (make setup makes one)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def http_token_value(self) -> str | None:
        """The token, or None when the routes are open (loopback only)."""
        return self.http_token.get_secret_value() if self.http_token else None


def is_loopback(address: str) -> bool:
    """Whether ``address`` is only reachable from this machine."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
