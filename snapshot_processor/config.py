"""The daemon's settings: the original daemon's variable names plus new ones in its style."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from pylib.config import settings as settings_module
from pylib.config.onepassword import OnePasswordSource
from pylib.config.secrets import DOCKER_SECRETS_DIR, SecretResolver, SecretStoreSettings
from pylib.config.settings import ConfigError, load_settings, one_of, read_config_file, secret
from snapshot_processor.camera import pyav
from snapshot_processor.camera.clients import VENDORS
from snapshot_processor.camera.settings import CameraSettings
from snapshot_processor.contract.settings import BrokerSettings
from snapshot_processor.detection.settings import DetectionSettings
from snapshot_processor.ingest.settings import IngestSettings
from snapshot_processor.mqtt.settings import MqttSettings
from snapshot_processor.ops.settings import OpsSettings, is_loopback
from snapshot_processor.storage.settings import StorageSettings

CONFIG_ENV = "SNAPSHOT_PROCESSOR_CONFIG"
# Set by the Dockerfile. Not /.dockerenv: marker files differ between engines and exist in
# any container a build runs in, while this names the image whose ports go through NAT.
CONTAINER_ENV = "SNAPSHOT_PROCESSOR_IN_CONTAINER"
# The network interfaces of this process's network namespace.
SYS_NET = Path("/sys/class/net")
# Numbered groups of settings: INPUT_1_LOCATION, OUTPUT_2_VENDOR.
GROUPS = ("INPUT", "OUTPUT")
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
    VENDOR: str = "foscam"
    ADDRESS: str | None = Field(None, pattern=r"^[^\s:/@]+(:\d{1,5})?$")
    USER: str | None = None
    PASSWORD: SecretStr | None = None
    URL: str | None = Field(None, pattern=r"^(https?|rtsps?)://")
    AUTH: Literal["basic", "digest", "none"] = "digest"
    SCHEME: Literal["http", "https"] = "http"
    # Stills from the RTSP stream: unset means on_demand for the rtsp vendor, off otherwise.
    RTSP_MODE: Literal["off", "on_demand", "warm"] | None = None
    # TCP by default: UDP loses packets, and so whole frames, on Wi-Fi.
    RTSP_TRANSPORT: Literal["tcp", "udp"] = "tcp"
    PRE_TRIGGER_SECONDS: float = Field(0.0, ge=0, le=30)
    # This camera's burst, where it differs from SNAPSHOTS_PER_TRIGGER and SNAPSHOT_INTERVAL.
    SNAPSHOTS: int | None = Field(None, ge=1, le=20)
    SNAPSHOT_INTERVAL: float | None = Field(None, ge=0, le=60)

    @field_validator("VENDOR")
    @classmethod
    def _known_vendor(cls, value: str) -> str:
        return one_of(value, VENDORS)

    @model_validator(mode="after")
    def _camera_password(self) -> Device:
        url = self.URL or ""
        if self.is_camera and self.VENDOR == "generic" and not url.startswith("http"):
            raise ValueError("a generic camera needs its snapshot URL, http(s)://host/path")
        if self.is_camera and self.VENDOR == "rtsp" and not url.startswith("rtsp"):
            raise ValueError("an rtsp camera needs its stream URL, rtsp://host[:port]/path")
        if self.is_camera and self.URL and self.VENDOR not in ("generic", "rtsp"):
            raise ValueError(
                f"URL is for generic and rtsp cameras; a {self.VENDOR} camera has none"
            )
        if self.is_camera and self.ADDRESS and self.VENDOR == "rtsp":
            raise ValueError("an rtsp camera's address is in its URL: ADDRESS is not used")
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
        if self.VENDOR == "rtsp" and not urlsplit(url).hostname:
            raise ValueError("an rtsp camera's URL names no host")
        if self.RTSP_MODE not in (None, "off") and self.VENDOR == "generic":
            raise ValueError(
                "RTSP_MODE is for rtsp, onvif and the known vendors' cameras; a generic "
                "camera's stream is an rtsp camera of its own"
            )
        if self.rtsp_mode == "off" and self.VENDOR == "rtsp":
            raise ValueError("an rtsp camera takes its stills from its stream: RTSP_MODE off")
        if self.is_camera and self.rtsp_mode != "off":
            why = pyav.missing()
            if why is not None:
                raise ValueError(f"RTSP_MODE {self.rtsp_mode} decodes the camera's stream: {why}")
        if self.PRE_TRIGGER_SECONDS and self.rtsp_mode != "warm":
            raise ValueError(
                "PRE_TRIGGER_SECONDS needs RTSP_MODE=warm: only a stream kept open has the "
                "seconds before a trigger"
            )
        return self

    @property
    def rtsp_mode(self) -> str:
        """RTSP_MODE, or its default for the vendor."""
        if self.RTSP_MODE is not None:
            return self.RTSP_MODE
        return "on_demand" if self.VENDOR == "rtsp" else "off"

    @property
    def key(self) -> str:
        """The wire contract's device key: ``"<location> <type>"``."""
        return f"{self.LOCATION} {self.TYPE}"

    @property
    def is_camera(self) -> bool:
        """A device of type camera (any case)."""
        return self.TYPE.strip().lower() == "camera"


class Settings(BaseModel):
    """Every setting, validated; aliases are the environment variable names, flat."""

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
    sentry_dsn: SecretStr | None = Field(None, alias="SENTRY_DSN", json_schema_extra=secret())
    sentry_environment: str | None = Field(None, alias="SENTRY_ENVIRONMENT")
    inputs: dict[DeviceNumber, Device] = Field(default_factory=dict, alias="INPUTS")
    outputs: dict[DeviceNumber, Device] = Field(default_factory=dict, alias="OUTPUTS")

    secrets: SecretStoreSettings = Field(
        default_factory=lambda: SecretStoreSettings.model_validate({})
    )
    broker: BrokerSettings = Field(default_factory=lambda: BrokerSettings.model_validate({}))
    camera: CameraSettings = Field(default_factory=lambda: CameraSettings.model_validate({}))
    ingest: IngestSettings = Field(default_factory=lambda: IngestSettings.model_validate({}))
    detection: DetectionSettings = Field(
        default_factory=lambda: DetectionSettings.model_validate({})
    )
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings.model_validate({}))
    ops: OpsSettings = Field(default_factory=lambda: OpsSettings.model_validate({}))
    mqtt: MqttSettings = Field(default_factory=lambda: MqttSettings.model_validate({}))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # What spans sections; each section checks its own.
        problems = []
        ingest, root = self.ingest_dir.resolve(), self.snapshots_root_dir.resolve()
        if ingest == root or not ingest.is_relative_to(root):
            problems.append("FTP_UPLOAD_DIR must be a folder inside SNAPSHOTS_ROOT_DIR")
        for group, devices in (("OUTPUT", self.outputs), ("INPUT", self.inputs)):
            problems.extend(_duplicate_cameras(group, devices))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ingest_dir(self) -> Path:
        """Where cameras push images: FTP_UPLOAD_DIR, under SNAPSHOTS_ROOT_DIR unless absolute."""
        return self.snapshots_root_dir / self.ingest.folder

    @property
    def queue_name(self) -> str:
        """The trigger queue: RABBITMQ_QUEUE (shared work), else this daemon's own."""
        return self.broker.queue or (
            f"{self.broker.exchange}.{self.broker.device_topic}.{self.device_name}.triggers"
        )

    @property
    def prefetch(self) -> int:
        """Triggers handed over before their acks: ``RABBITMQ_PREFETCH``, else what every camera
        may hold at once (at least 8: cameras that hang never fill the window)."""
        if self.broker.prefetch is not None:
            return self.broker.prefetch
        return max(8, (self.camera.queue + 2) * len(self.cameras))

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
    def bundles_path(self) -> Path:
        """The SQLite record of bundles: cameras, files, checksums, copies and states."""
        return self.snapshots_root_dir / "bundles.sqlite3"

    @property
    def cameras(self) -> list[Device]:
        """Outputs of type camera: the cameras a trigger makes us fetch."""
        return [device for device in self.outputs.values() if device.is_camera]

    @property
    def upload_cameras(self) -> list[Device]:
        """Inputs of type camera: the cameras that push images by FTP."""
        return [device for device in self.inputs.values() if device.is_camera]


def _duplicate_cameras(group: str, devices: Mapping[int, Device]) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for number, device in sorted(devices.items()):
        if not device.is_camera:
            continue
        first = seen.setdefault(device.key.casefold(), number)
        if first != number:
            problems.append(
                f"{group}_{number} and {group}_{first} are both the camera "
                f"{devices[first].key!r}; camera keys must differ in more than case"
            )
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


def host_network(sys_net: Path = SYS_NET) -> bool:
    """Whether this network namespace is the host's, as under ``--network host``.

    A container on a network of its own sees only virtual interfaces (lo, a veth); the
    host's namespace holds its network cards, each linked to its ``device`` in sysfs.
    """
    try:
        return any((interface / "device").exists() for interface in sys_net.iterdir())
    except OSError:
        return False


def container_warnings(
    settings: Settings, env: Mapping[str, str] | None = None, sys_net: Path = SYS_NET
) -> list[str]:
    """Valid settings that will not work as meant inside the container image behind its
    NAT (none outside it, none under host networking, where there is no NAT)."""
    env = os.environ if env is None else env
    if env.get(CONTAINER_ENV, "") in ("", "0") or host_network(sys_net):
        return []
    warnings = []
    if settings.ingest.ftp_on and not settings.ingest.ftp_masquerade_address:
        warnings.append(
            "FTP passive mode is on in a container and FTP_MASQUERADE_ADDRESS is not set: "
            "passive replies carry the container's own address, which cameras cannot reach "
            "through Docker's NAT; set it to the host's LAN address (make setup writes it "
            "into .env)"
        )
    if settings.ops.http_port and is_loopback(settings.ops.http_bind):
        warnings.append(
            f"HTTP_BIND is {settings.ops.http_bind} in a container: a published HTTP port reaches "
            "nothing (the healthcheck still works); set HTTP_BIND=0.0.0.0 and HTTP_TOKEN, as "
            "docker-compose.yml does"
        )
    return warnings


def config_file_path(env: Mapping[str, str], explicit: Path | None = None) -> Path | None:
    """``--config``, else ``$SNAPSHOT_PROCESSOR_CONFIG``, else the default file if present."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


# Prefixes the libraries read too (boto3, google-auth, 1Password's SDK, sentry-sdk, proxies):
# their variables are named only when they are close to one of ours.
SHARED_PREFIXES = ("AWS_", "GOOGLE_", "OP_", "SENTRY_", "HTTP_")


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """Variables that look like settings but are none, each with the nearest known name."""
    return settings_module.unknown_variables(
        Settings,
        os.environ if env is None else env,
        groups=GROUPS,
        # The entry point's own, and boto3's region (ours is AWS_DEFAULT_REGION).
        ignore=(CONFIG_ENV, CONTAINER_ENV, "SNAPSHOTS_HOST_DIR", "AWS_REGION"),
        shared_prefixes=SHARED_PREFIXES,
    )


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
        groups=GROUPS,
        group_secrets=("PASSWORD",),
    )
