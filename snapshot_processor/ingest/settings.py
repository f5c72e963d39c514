"""The ingest settings section: the FTP server cameras push to, and the folder it fills."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pylib.config.settings import CommaList, secret
from pylib.retry import RetryPolicy


class IngestSettings(BaseModel):
    """``FTP_*`` and the watched folder's ``UPLOAD_*`` (names kept from the original)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ftp_enabled: bool | None = Field(None, alias="FTP_ENABLED")
    ftp_user: str = Field("camera", alias="FTP_USER", min_length=1, pattern=r"^[^\s:]+$")
    ftp_pass: SecretStr | None = Field(None, alias="FTP_PASS", json_schema_extra=secret())
    folder: Path = Field(Path("upload"), alias="FTP_UPLOAD_DIR")  # below SNAPSHOTS_ROOT_DIR
    create_dirs: CommaList = Field(default_factory=list, alias="FTP_CREATE_DIRS")
    ftp_listen_address: str = Field("0.0.0.0", alias="FTP_LISTEN_ADDRESS", min_length=1)
    ftp_port: int = Field(2121, alias="FTP_PORT", ge=0, le=65535)
    ftp_passive_ports: tuple[int, int] | None = Field(None, alias="FTP_PASSIVE_PORTS")
    ftp_masquerade_address: str | None = Field(None, alias="FTP_MASQUERADE_ADDRESS")
    ftp_max_connections: int = Field(64, alias="FTP_MAX_CONNECTIONS", ge=1)
    ftp_max_connections_per_ip: int = Field(16, alias="FTP_MAX_CONNECTIONS_PER_IP", ge=1)
    ftp_tls_cert: Path | None = Field(None, alias="FTP_TLS_CERT")
    ftp_tls_key: Path | None = Field(None, alias="FTP_TLS_KEY")
    ftp_tls_required: bool = Field(True, alias="FTP_TLS_REQUIRED")
    ftp_ban_after: int = Field(5, alias="FTP_BAN_AFTER", ge=1)
    ftp_ban_seconds: float = Field(600.0, alias="FTP_BAN_SECONDS", ge=0)
    ftp_login_delay: float = Field(2.0, alias="FTP_LOGIN_DELAY", ge=0, le=30)
    ftp_reserved_sessions: int = Field(8, alias="FTP_RESERVED_SESSIONS", ge=0)
    ftp_login_timeout: float = Field(10.0, alias="FTP_LOGIN_TIMEOUT", gt=0, le=300)
    ftp_max_failed_logins_per_minute: int = Field(
        30, alias="FTP_MAX_FAILED_LOGINS_PER_MINUTE", ge=1
    )
    max_bytes: int = Field(20 * 1024 * 1024, alias="UPLOAD_MAX_BYTES", ge=1024)
    settle_seconds: float = Field(0.1, alias="UPLOAD_SETTLE_SECONDS", ge=0, le=60)
    stable_seconds: float = Field(2.0, alias="UPLOAD_STABLE_SECONDS", gt=0, le=600)
    stray_max_age: float = Field(86_400.0, alias="UPLOAD_STRAY_MAX_AGE", gt=0)
    stray_max_bytes: int = Field(100 * 1024 * 1024, alias="UPLOAD_STRAY_MAX_BYTES", ge=0)
    quarantine_max_bytes: int = Field(100 * 1024 * 1024, alias="UPLOAD_QUARANTINE_MAX_BYTES", ge=0)

    # A pushed image the chain handed back is offered again after this (docs/retries.md).
    REQUEUE: ClassVar[RetryPolicy] = RetryPolicy(first=2.0, maximum=30.0)

    @field_validator("create_dirs")
    @classmethod
    def _relative_dirs(cls, value: list[str]) -> list[str]:
        for folder in value:
            if Path(folder).is_absolute() or ".." in Path(folder).parts:
                raise ValueError(f"{folder!r} must be a folder inside the upload dir")
        return value

    @field_validator("ftp_passive_ports", mode="before")
    @classmethod
    def _port_range(cls, value: Any) -> Any:
        if isinstance(value, str):
            low, sep, high = value.partition("-")
            if not sep or not low.strip().isdigit() or not high.strip().isdigit():
                raise ValueError("write the range as LOW-HIGH, e.g. 30000-30009")
            return (int(low), int(high))
        return value

    @field_validator("ftp_passive_ports")
    @classmethod
    def _ordered_ports(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1024 <= value[0] <= value[1] <= 65535:
            raise ValueError("passive ports must be LOW-HIGH within 1024-65535")
        return value

    @field_validator("ftp_masquerade_address")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(
                    "must be the IPv4 address cameras reach this host at (passive replies "
                    "carry it), e.g. 192.168.1.10"
                ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> IngestSettings:
        problems = []
        if self.ftp_enabled and self.ftp_pass is None:
            problems.append(
                "FTP_ENABLED is true, so the FTP_PASS secret is needed (no anonymous FTP)"
            )
        if self.ftp_max_connections_per_ip >= self.ftp_max_connections:
            problems.append("FTP_MAX_CONNECTIONS_PER_IP must be below FTP_MAX_CONNECTIONS")
        if self.ftp_reserved_sessions >= self.ftp_max_connections:
            problems.append("FTP_RESERVED_SESSIONS must be below FTP_MAX_CONNECTIONS")
        if (self.ftp_tls_cert is None) != (self.ftp_tls_key is None):
            problems.append("FTPS needs both FTP_TLS_CERT and FTP_TLS_KEY")
        for name, path in (("FTP_TLS_CERT", self.ftp_tls_cert), ("FTP_TLS_KEY", self.ftp_tls_key)):
            if path is not None and not path.is_file():
                problems.append(f"{name}: no such file {path}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ftp_on(self) -> bool:
        """FTP runs when its password is set, unless FTP_ENABLED says no."""
        return self.ftp_pass is not None and self.ftp_enabled is not False
