"""The daemon's settings: the original daemon's variable names plus new ones in its style."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from pylib.config.onepassword import OnePasswordSource
from pylib.config.secrets import DOCKER_SECRETS_DIR, SecretResolver
from pylib.config.settings import ConfigError, load_settings, read_config_file, secret
from snapshot_processor.camera.networks import DEFAULT_CAMERA_NETWORKS, IPNetwork, parse_networks

CONFIG_ENV = "SNAPSHOT_PROCESSOR_CONFIG"
# Set by the Dockerfile. Not /.dockerenv: marker files differ between engines (Podman,
# Kubernetes) and exist wherever a build or CI job runs in a container, while this names
# the image whose ports are published through NAT.
CONTAINER_ENV = "SNAPSHOT_PROCESSOR_IN_CONTAINER"
DEFAULT_CONFIG_FILE = Path("config/snapshot-processor.toml")
# The original read n = 1..8; more are allowed for larger homes.
MAX_DEVICES = 64


DeviceNumber = Annotated[int, Field(ge=1, le=MAX_DEVICES)]


class Device(BaseModel):
    """An ``INPUT_n_*`` or ``OUTPUT_n_*`` group: a sensor, an actuator or a camera."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    LOCATION: str = Field(min_length=1)
    TYPE: str = Field(min_length=1)
    # How to reach a camera output; unset fields come from the trigger's device_params.
    VENDOR: Literal["foscam", "hikvision", "dahua", "reolink", "generic"] = "foscam"
    ADDRESS: str | None = Field(None, pattern=r"^[^\s:/@]+(:\d{1,5})?$")
    USER: str | None = None
    PASSWORD: SecretStr | None = None
    URL: str | None = Field(None, pattern=r"^https?://")
    AUTH: Literal["basic", "digest", "none"] = "digest"
    SCHEME: Literal["http", "https"] = "http"

    @model_validator(mode="after")
    def _camera_password(self) -> Device:
        # With an address configured, the trigger's device_params no longer supply one.
        needs = (
            self.is_camera
            and self.ADDRESS
            and not (self.VENDOR == "generic" and self.AUTH == "none")
        )
        if needs and self.PASSWORD is None:
            raise ValueError(
                "a camera with an ADDRESS needs its PASSWORD secret, which is set nowhere "
                "(environment, SECRETS_DIR file or 1Password item named like the variable)"
            )
        if self.is_camera and self.VENDOR == "generic" and not self.URL:
            raise ValueError("a generic camera needs its snapshot URL")
        return self

    @property
    def key(self) -> str:
        """The wire contract's device key: ``"<location> <type>"``."""
        return f"{self.LOCATION} {self.TYPE}"

    @property
    def is_camera(self) -> bool:
        """A device of type camera (any case)."""
        return self.TYPE.strip().lower() == "camera"


class Settings(BaseModel):
    """Every setting, validated; aliases are the environment variable names."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    app_name: str = Field("snapshot-processor", alias="APP_NAME", min_length=1)
    # One word of a routing key: no dots or wildcards. The default is the short host name.
    device_name: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "snapshot-processor",
        alias="DEVICE_NAME",
        pattern=r"^[^.*#\s]+$",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")
    syslog_address: str | None = Field(None, alias="SYSLOG_ADDRESS")
    snapshots_root_dir: Path = Field(Path("./data"), alias="SNAPSHOTS_ROOT_DIR")
    shutdown_timeout: float = Field(10.0, alias="SHUTDOWN_TIMEOUT", gt=0, le=300)
    # The HTTP server: health, metrics, the API and the status page. Port 0: off.
    http_bind: str = Field("127.0.0.1", alias="HTTP_BIND", min_length=1)
    http_port: int = Field(8080, alias="HTTP_PORT", ge=0, le=65535)
    http_token: SecretStr | None = Field(None, alias="HTTP_TOKEN", json_schema_extra=secret())
    # Host names beside the loopback ones the server answers to (a reverse proxy's).
    http_allowed_hosts: list[str] = Field(default_factory=list, alias="HTTP_ALLOWED_HOSTS")
    recent_events: int = Field(500, alias="RECENT_EVENTS", ge=10, le=100_000)
    metrics_port: int = Field(0, alias="METRICS_PORT", ge=0, le=65535)
    # Loopback by default: the counters name cameras and are no business of the LAN.
    metrics_address: str = Field("127.0.0.1", alias="METRICS_ADDRESS", min_length=1)

    rabbitmq_server_address: str = Field("127.0.0.1", alias="RABBITMQ_SERVER_ADDRESS", min_length=1)
    rabbitmq_url: SecretStr | None = Field(None, alias="RABBITMQ_URL", json_schema_extra=secret())
    rabbitmq_exchange: str = Field("home_automation", alias="RABBITMQ_EXCHANGE", min_length=1)
    rabbitmq_device_topic: str = Field("snapshot", alias="RABBITMQ_DEVICE_TOPIC", min_length=1)
    rabbitmq_queue: str | None = Field(None, alias="RABBITMQ_QUEUE", min_length=1)
    # None: follows from the cameras (see ``prefetch``).
    rabbitmq_prefetch: int | None = Field(None, alias="RABBITMQ_PREFETCH", ge=1, le=1000)
    # quorum: replicated on a cluster, so the trigger queue outlives a node.
    rabbitmq_queue_type: Literal["classic", "quorum"] = Field(
        "classic", alias="RABBITMQ_QUEUE_TYPE"
    )
    heartbeat_interval: float = Field(5.0, alias="HEARTBEAT_INTERVAL", gt=0)
    outbox_max_events: int = Field(10_000, alias="OUTBOX_MAX_EVENTS", ge=1)
    trigger_max_bytes: int = Field(1_048_576, alias="TRIGGER_MAX_BYTES", ge=256)

    camera_timeout: float = Field(5.0, alias="CAMERA_TIMEOUT", gt=0, le=120)
    camera_retries: int = Field(2, alias="CAMERA_RETRIES", ge=0, le=10)
    camera_workers: int = Field(32, alias="CAMERA_WORKERS", ge=1, le=256)
    snapshots_per_trigger: int = Field(1, alias="SNAPSHOTS_PER_TRIGGER", ge=1, le=20)
    snapshot_interval: float = Field(1.0, alias="SNAPSHOT_INTERVAL", ge=0, le=60)
    camera_queue: int = Field(3, alias="CAMERA_QUEUE", ge=1, le=100)
    camera_breaker_failures: int = Field(3, alias="CAMERA_BREAKER_FAILURES", ge=1, le=100)
    camera_breaker_seconds: float = Field(30.0, alias="CAMERA_BREAKER_SECONDS", gt=0, le=3600)
    # 0 switches probing off; snapshots still report each camera's health.
    camera_probe_interval: float = Field(300.0, alias="CAMERA_PROBE_INTERVAL", ge=0, le=86400)
    # Where a trigger's device_params may send the camera GET; OUTPUT_n_ADDRESS is not bounded.
    camera_networks: Annotated[tuple[IPNetwork, ...], BeforeValidator(parse_networks)] = Field(
        default_factory=lambda: parse_networks(DEFAULT_CAMERA_NETWORKS), alias="CAMERA_NETWORKS"
    )

    ftp_enabled: bool | None = Field(None, alias="FTP_ENABLED")
    ftp_user: str = Field("camera", alias="FTP_USER", min_length=1, pattern=r"^[^\s:]+$")
    ftp_pass: SecretStr | None = Field(None, alias="FTP_PASS", json_schema_extra=secret())
    ftp_upload_dir: Path = Field(Path("upload"), alias="FTP_UPLOAD_DIR")
    ftp_create_dirs: list[str] = Field(default_factory=list, alias="FTP_CREATE_DIRS")
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
    upload_max_bytes: int = Field(20 * 1024 * 1024, alias="UPLOAD_MAX_BYTES", ge=1024)
    upload_settle_seconds: float = Field(0.1, alias="UPLOAD_SETTLE_SECONDS", ge=0, le=60)
    upload_stable_seconds: float = Field(2.0, alias="UPLOAD_STABLE_SECONDS", gt=0, le=600)
    upload_stray_max_age: float = Field(86_400.0, alias="UPLOAD_STRAY_MAX_AGE", gt=0)
    upload_stray_max_bytes: int = Field(100 * 1024 * 1024, alias="UPLOAD_STRAY_MAX_BYTES", ge=0)
    upload_quarantine_max_bytes: int = Field(
        100 * 1024 * 1024, alias="UPLOAD_QUARANTINE_MAX_BYTES", ge=0
    )

    object_detection_enabled: bool = Field(False, alias="OBJECT_DETECTION_ENABLED")
    object_detection_backend: Literal["rekognition", "local", "onnx", "none"] = Field(
        "rekognition", alias="OBJECT_DETECTION_BACKEND"
    )
    aws_default_region: str | None = Field(None, alias="AWS_DEFAULT_REGION")
    aws_alt_region: str | None = Field(None, alias="AWS_ALT_REGION")
    detection_min_confidence: float = Field(55.0, alias="DETECTION_MIN_CONFIDENCE", ge=0, le=100)
    detection_max_labels: int = Field(20, alias="DETECTION_MAX_LABELS", ge=1, le=1000)
    person_min_confidence: float = Field(80.0, alias="PERSON_MIN_CONFIDENCE", ge=0, le=100)
    onnx_model_path: Path | None = Field(None, alias="ONNX_MODEL_PATH")
    onnx_labels: list[str] = Field(default_factory=list, alias="ONNX_LABELS")
    detection_dedupe_seconds: float = Field(60.0, alias="DETECTION_DEDUPE_SECONDS", ge=0)
    detection_max_per_hour: int | None = Field(None, alias="DETECTION_MAX_PER_HOUR", ge=0)
    detection_max_per_day: int | None = Field(None, alias="DETECTION_MAX_PER_DAY", ge=0)
    detection_annotate: bool = Field(True, alias="DETECTION_ANNOTATE")

    # Google Drive: on when GOOGLE_DRIVE_FOLDER (the top folder's title) is set.
    google_drive_folder: str | None = Field(None, alias="GOOGLE_DRIVE_FOLDER", min_length=1)
    google_drive_credentials: Path | None = Field(None, alias="GOOGLE_DRIVE_CREDENTIALS")
    google_drive_api_url: str = Field(
        "https://www.googleapis.com/", alias="GOOGLE_DRIVE_API_URL", pattern=r"^https?://\S+$"
    )
    drive_archive_after_hours: float = Field(24.0, alias="DRIVE_ARCHIVE_AFTER_HOURS", gt=0)

    # S3-compatible storage (on when S3_BUCKET is set), the upload queue, local retention.
    s3_bucket: str | None = Field(
        None, alias="S3_BUCKET", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )
    s3_prefix: str = Field("", alias="S3_PREFIX")
    upload_max_attempts: int = Field(20, alias="UPLOAD_MAX_ATTEMPTS", ge=1, le=1000)
    retention_days: float = Field(30.0, alias="RETENTION_DAYS", ge=0)
    retention_max_bytes: int = Field(0, alias="RETENTION_MAX_BYTES", ge=0)
    retention_min_free_bytes: int = Field(1024**3, alias="RETENTION_MIN_FREE_BYTES", ge=0)
    retention_interval: float = Field(600.0, alias="RETENTION_INTERVAL", gt=0)

    hc_ping_url: SecretStr | None = Field(None, alias="HC_PING_URL", json_schema_extra=secret())
    cronitor_monitor_key: SecretStr | None = Field(
        None, alias="CRONITOR_MONITOR_KEY", json_schema_extra=secret()
    )
    health_ping_interval: float = Field(60.0, alias="HEALTH_PING_INTERVAL", gt=0)

    sentry_dsn: SecretStr | None = Field(None, alias="SENTRY_DSN", json_schema_extra=secret())
    sentry_environment: str | None = Field(None, alias="SENTRY_ENVIRONMENT")

    op_connect_host: str | None = Field(None, alias="OP_CONNECT_HOST")
    op_connect_token: SecretStr | None = Field(
        None, alias="OP_CONNECT_TOKEN", json_schema_extra=secret()
    )
    op_vault: str | None = Field(None, alias="OP_VAULT")
    secrets_dir: Path = Field(DOCKER_SECRETS_DIR, alias="SECRETS_DIR")

    inputs: dict[DeviceNumber, Device] = Field(default_factory=dict, alias="INPUTS")
    outputs: dict[DeviceNumber, Device] = Field(default_factory=dict, alias="OUTPUTS")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ftp_create_dirs", "onnx_labels", "http_allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ftp_create_dirs")
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

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # One validator, so that check-config lists every such problem at once.
        problems = []
        if self.op_connect_host and not (self.op_connect_token and self.op_vault):
            problems.append(
                "OP_CONNECT_HOST is set, so OP_CONNECT_TOKEN and OP_VAULT are needed too"
            )
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
        if self.upload_dir.resolve() == self.snapshots_root_dir.resolve() or not (
            self.upload_dir.resolve().is_relative_to(self.snapshots_root_dir.resolve())
        ):
            problems.append("FTP_UPLOAD_DIR must be a folder inside SNAPSHOTS_ROOT_DIR")
        if self.google_drive_folder and self.google_drive_credentials is None:
            problems.append(
                "GOOGLE_DRIVE_FOLDER is set, so GOOGLE_DRIVE_CREDENTIALS is needed "
                "(the JSON file snapshot-processor drive-auth writes, or a service-account key)"
            )
        if (
            self.google_drive_credentials is not None
            and not self.google_drive_credentials.is_file()
        ):
            problems.append(
                f"GOOGLE_DRIVE_CREDENTIALS: no such file {self.google_drive_credentials}"
                " (snapshot-processor drive-auth writes it)"
            )
        if self.detection_backend == "onnx" and self.onnx_model_path is None:
            problems.append("OBJECT_DETECTION_BACKEND is onnx, so ONNX_MODEL_PATH is needed")
        if self.onnx_model_path is not None and not self.onnx_model_path.is_file():
            problems.append(f"ONNX_MODEL_PATH: no such file {self.onnx_model_path}")
        if self.detection_backend == "rekognition" and not self.aws_region:
            problems.append("Rekognition needs AWS_ALT_REGION or AWS_DEFAULT_REGION")
        for group, devices in (("OUTPUT", self.outputs), ("INPUT", self.inputs)):
            problems.extend(_duplicate_cameras(group, devices))
        if self.http_port and not self.http_token and not _is_loopback(self.http_bind):
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
    def detection_backend(self) -> str:
        """The backend in use: ``none`` unless OBJECT_DETECTION_ENABLED."""
        return self.object_detection_backend if self.object_detection_enabled else "none"

    @property
    def aws_region(self) -> str | None:
        """Rekognition's region: AWS_ALT_REGION, else AWS_DEFAULT_REGION."""
        return self.aws_alt_region or self.aws_default_region

    @property
    def ftp_on(self) -> bool:
        """FTP runs when its password is set, unless FTP_ENABLED says no."""
        return self.ftp_pass is not None and self.ftp_enabled is not False

    @property
    def drive_on(self) -> bool:
        """Google Drive uploads are configured."""
        return bool(self.google_drive_folder)

    @property
    def upload_dir(self) -> Path:
        """Where cameras upload: FTP_UPLOAD_DIR, relative to SNAPSHOTS_ROOT_DIR unless absolute."""
        return self.snapshots_root_dir / self.ftp_upload_dir

    @property
    def queue_name(self) -> str:
        """The durable trigger queue, one per daemon by default (each sees every trigger,
        as with the original); daemons given the same RABBITMQ_QUEUE share the work."""
        return self.rabbitmq_queue or (
            f"{self.rabbitmq_exchange}.{self.rabbitmq_device_topic}.{self.device_name}.triggers"
        )

    @property
    def prefetch(self) -> int:
        """Triggers the broker hands over before their acks: ``RABBITMQ_PREFETCH``, else
        what every camera may hold at once (one fetching, ``CAMERA_QUEUE`` waiting, one on
        its way to the outbox), at least 8: cameras that hang never fill the window."""
        if self.rabbitmq_prefetch is not None:
            return self.rabbitmq_prefetch
        return max(8, (self.camera_queue + 2) * len(self.cameras))

    @property
    def outbox_path(self) -> Path:
        """The SQLite outbox of events not yet confirmed by the broker."""
        return self.snapshots_root_dir / "outbox.sqlite3"

    @property
    def recent_events_path(self) -> Path:
        """The recent events shown by the status page and the API."""
        return self.snapshots_root_dir / "recent-events.sqlite3"

    @property
    def upload_queue_path(self) -> Path:
        """The SQLite queue of files still to copy to cloud storage."""
        return self.snapshots_root_dir / "uploads.sqlite3"

    @property
    def cameras(self) -> list[Device]:
        """Outputs of type camera: the cameras a trigger makes us fetch."""
        return [device for device in self.outputs.values() if device.is_camera]

    @property
    def upload_cameras(self) -> list[Device]:
        """Inputs of type camera: the cameras that push images by FTP."""
        return [device for device in self.inputs.values() if device.is_camera]


def _is_loopback(address: str) -> bool:
    """Whether ``address`` is only reachable from this machine."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _duplicate_cameras(group: str, devices: Mapping[int, Device]) -> list[str]:
    """Camera keys that differ only in case (or not at all): a trigger or an upload
    folder could not tell them apart."""
    seen: dict[str, int] = {}
    problems = []
    for number, device in sorted(devices.items()):
        if not device.is_camera:
            continue
        folded = device.key.casefold()
        if folded in seen:
            first = seen[folded]
            problems.append(
                f"{group}_{number} and {group}_{first} are both the camera "
                f"{devices[first].key!r}; camera keys must differ in more than case"
            )
        else:
            seen[folded] = number
    return problems


def _resolver(values: Mapping[str, Any]) -> SecretResolver:
    secrets_dir = Path(str(values.get("SECRETS_DIR") or DOCKER_SECRETS_DIR))
    plain = SecretResolver({}, secrets_dir)
    host = values.get("OP_CONNECT_HOST")
    token = values.get("OP_CONNECT_TOKEN") or plain.get("OP_CONNECT_TOKEN")
    vault = values.get("OP_VAULT")
    store = None
    if host and token and vault:
        store = OnePasswordSource(str(host), str(token), str(vault))
    return SecretResolver({}, secrets_dir, store, store_label=f"1Password vault {vault!r}")


def container_warnings(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    """Valid settings that will not work as meant inside the container image (empty
    outside it): check-config prints them and the daemon logs them at start."""
    env = os.environ if env is None else env
    if env.get(CONTAINER_ENV, "") in ("", "0"):
        return []
    warnings = []
    if settings.ftp_on and not settings.ftp_masquerade_address:
        warnings.append(
            "FTP passive mode is on in a container and FTP_MASQUERADE_ADDRESS is not set: "
            "passive replies carry the container's own address, which cameras cannot reach "
            "through Docker's NAT; set it to the host's LAN address (make setup writes it "
            "into .env)"
        )
    if settings.http_port and _is_loopback(settings.http_bind):
        warnings.append(
            f"HTTP_BIND is {settings.http_bind} in a container: a published HTTP port reaches "
            "nothing (the healthcheck still works); set HTTP_BIND=0.0.0.0 and HTTP_TOKEN, as "
            "docker-compose.yml does"
        )
    return warnings


def config_file_path(env: Mapping[str, str], explicit: Path | None = None) -> Path | None:
    """The config file to read: ``--config``, else ``$SNAPSHOT_PROCESSOR_CONFIG``, else the default if present."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Load and validate the settings; raises ConfigError naming every problem."""
    env = os.environ if env is None else env
    path = config_file_path(env, config_file)
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = read_config_file(path)
        nested = [key for key, value in file_values.items() if isinstance(value, dict)]
        if nested:
            raise ConfigError(
                [f"{path}: [{key}] tables are not used; write flat KEY = value" for key in nested]
            )
    return load_settings(
        Settings,
        env,
        file_values,
        resolver_factory=_resolver,
        groups=("INPUT", "OUTPUT"),
        group_secrets=("PASSWORD",),
    )
