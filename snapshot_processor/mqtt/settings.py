"""The MQTT settings section: the broker Home Assistant listens to, and how we appear there."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pylib.config.settings import secret
from pylib.retry import RetryPolicy

# Topic words: no wildcards, and no dots (RabbitMQ's MQTT plugin turns them into slashes).
TOPIC_PREFIX = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class MqttSettings(BaseModel):
    """``MQTT_*``: off unless ``MQTT_URL`` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # mqtt://[user[:password]@]host[:port] or mqtts://… (TLS).
    url: SecretStr | None = Field(None, alias="MQTT_URL", json_schema_extra=secret())
    password: SecretStr | None = Field(None, alias="MQTT_PASSWORD", json_schema_extra=secret())
    # Where Home Assistant looks for discovery messages (its own default).
    discovery_prefix: str = Field(
        "homeassistant", alias="MQTT_DISCOVERY_PREFIX", pattern=TOPIC_PREFIX
    )
    # Our state topics: <prefix>/<DEVICE_NAME>/...
    topic_prefix: str = Field("snapshot-processor", alias="MQTT_TOPIC_PREFIX", pattern=TOPIC_PREFIX)
    # The person sensor stays on this long after the last person was found.
    person_hold: float = Field(30.0, alias="MQTT_PERSON_HOLD", gt=0, le=86_400)
    # The CA that signed an mqtts:// broker's certificate, where the system's do not.
    ca_file: Path | None = Field(None, alias="MQTT_CA_FILE")

    # After a lost or refused connection; the connection is best effort, so no bound.
    RECONNECT: ClassVar[RetryPolicy] = RetryPolicy(first=1.0, maximum=30.0, jitter=0.2)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("names no host: mqtt://[user@]host[:port]")
        try:
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("takes no path or query: mqtt://[user@]host[:port]")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.url is None:
            unused = [
                name
                for name, value in (
                    ("MQTT_PASSWORD", self.password),
                    ("MQTT_CA_FILE", self.ca_file),
                )
                if value is not None
            ]
            if unused:
                raise ValueError(f"{' and '.join(unused)} set, but MQTT_URL is not: MQTT is off")
            return self
        parts = urlsplit(self.url.get_secret_value())
        if not parts.username and (parts.password is not None or self.password is not None):
            raise ValueError("the MQTT password needs a user: mqtt://user@host")
        if parts.password is not None and self.password is not None:
            raise ValueError(
                "the MQTT password is set twice, in MQTT_URL and as MQTT_PASSWORD; keep one"
            )
        if self.ca_file is not None and parts.scheme != "mqtts":
            raise ValueError("MQTT_CA_FILE is for mqtts:// brokers; MQTT_URL is plain mqtt://")
        return self

    @property
    def on(self) -> bool:
        return self.url is not None

    @property
    def _parts(self) -> tuple[str, int, bool, str | None, str | None]:
        if self.url is None:
            raise ValueError("MQTT is off")
        parts = urlsplit(self.url.get_secret_value())
        password = (
            self.password.get_secret_value()
            if self.password is not None
            else unquote(parts.password)
            if parts.password is not None
            else None
        )
        user = unquote(parts.username) if parts.username else None
        return (
            parts.hostname or "",
            parts.port or DEFAULT_PORTS[parts.scheme],
            parts.scheme == "mqtts",
            user,
            password,
        )

    @property
    def host(self) -> str:
        return self._parts[0]

    @property
    def port(self) -> int:
        return self._parts[1]

    @property
    def tls(self) -> bool:
        return self._parts[2]

    @property
    def user(self) -> str | None:
        return self._parts[3]

    @property
    def password_value(self) -> str | None:
        return self._parts[4]

    @property
    def broker(self) -> str:
        """``host:port`` for logs and health: never the user or password."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
