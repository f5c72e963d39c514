"""Home Assistant's documented MQTT discovery schema for the entities we publish, so tests
can check our discovery messages against it: :func:`check_discovery`.

Written from Home Assistant's documentation (github.com/home-assistant/home-assistant.io),
the ``{% configuration %}`` blocks of:

- ``source/_integrations/image.mqtt.markdown``
- ``source/_integrations/binary_sensor.mqtt.markdown``
- ``source/_integrations/sensor.mqtt.markdown``
- ``source/_integrations/button.mqtt.markdown``
- ``source/_integrations/mqtt.markdown``: the discovery topic
  ``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`` (ids from
  ``[a-zA-Z0-9_-]``), single-component and device-based discovery (``device`` as the
  component, ``components``/``cmps``, ``platform``/``p``, required ``origin``), the base
  topic ``~``, the abbreviation tables (entity, device registry, origin) and the
  availability options shared by every MQTT entity platform;
- device classes: ``source/_integrations/binary_sensor.markdown``,
  ``sensor.markdown``, ``button.markdown``; sensor state classes and the extra sensor
  device classes (conductivity, pm4, temperature_delta) from the developer docs
  (github.com/home-assistant/developers.home-assistant ``docs/core/entity/sensor.md``).

``default_entity_id`` (abbreviated ``def_ent_id``, e.g. ``sensor.foobar``) is the 2025.10+
replacement of ``object_id``, which the current docs call deprecated (dropped from the
abbreviation table; Home Assistant warns it stops working in 2026.4); both are accepted
here.

Stricter than Home Assistant on purpose: HA ignores unknown keys in a discovery payload
(for compatibility across versions), this check rejects them (a typo would otherwise be
silently ignored), and values must have the documented JSON type (no ``1`` for ``true``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ABBREVIATIONS",
    "BINARY_SENSOR_DEVICE_CLASSES",
    "BUTTON_DEVICE_CLASSES",
    "DEVICE_ABBREVIATIONS",
    "DEVICE_SHARED_OPTIONS",
    "ENTITY_CATEGORIES",
    "MODELS",
    "ORIGIN_ABBREVIATIONS",
    "SENSOR_DEVICE_CLASSES",
    "SENSOR_STATE_CLASSES",
    "Availability",
    "BinarySensorConfig",
    "ButtonConfig",
    "Device",
    "ImageConfig",
    "Origin",
    "SensorConfig",
    "check_discovery",
    "expand",
    "parse_topic",
]

# ---------------------------------------------------------------------------- facts

# binary_sensor.markdown, "Device class" (None is the default and need not be set).
BINARY_SENSOR_DEVICE_CLASSES = frozenset(
    {
        "battery",
        "battery_charging",
        "carbon_monoxide",
        "cold",
        "connectivity",
        "door",
        "garage_door",
        "gas",
        "heat",
        "light",
        "lock",
        "moisture",
        "motion",
        "moving",
        "occupancy",
        "opening",
        "plug",
        "power",
        "presence",
        "problem",
        "running",
        "safety",
        "smoke",
        "sound",
        "tamper",
        "update",
        "vibration",
        "window",
    }
)

# sensor.markdown, "Device class"; plus conductivity, pm4 and temperature_delta, which the
# developer docs' table lists (SensorDeviceClass constants, values in lower case).
SENSOR_DEVICE_CLASSES = frozenset(
    {
        "absolute_humidity",
        "apparent_power",
        "aqi",
        "area",
        "atmospheric_pressure",
        "battery",
        "blood_glucose_concentration",
        "carbon_dioxide",
        "carbon_monoxide",
        "conductivity",
        "current",
        "data_rate",
        "data_size",
        "date",
        "distance",
        "duration",
        "energy",
        "energy_distance",
        "energy_storage",
        "enum",
        "frequency",
        "gas",
        "humidity",
        "illuminance",
        "irradiance",
        "moisture",
        "monetary",
        "nitrogen_dioxide",
        "nitrogen_monoxide",
        "nitrous_oxide",
        "ozone",
        "ph",
        "pm1",
        "pm25",
        "pm4",
        "pm10",
        "power_factor",
        "power",
        "precipitation",
        "precipitation_intensity",
        "pressure",
        "reactive_energy",
        "reactive_power",
        "signal_strength",
        "sound_pressure",
        "speed",
        "sulphur_dioxide",
        "temperature",
        "temperature_delta",
        "timestamp",
        "volatile_organic_compounds",
        "volatile_organic_compounds_parts",
        "voltage",
        "volume",
        "volume_flow_rate",
        "volume_storage",
        "water",
        "weight",
        "wind_direction",
        "wind_speed",
    }
)

# button.markdown, "Device class".
BUTTON_DEVICE_CLASSES = frozenset({"identify", "restart", "update"})

# developers.home-assistant docs/core/entity/sensor.md, "Available state classes".
SENSOR_STATE_CLASSES = frozenset({"measurement", "measurement_angle", "total", "total_increasing"})

# The entity's category (developer docs, generic properties); sensor.mqtt and
# binary_sensor.mqtt add: "When set, the entity category must be `diagnostic` for sensors."
ENTITY_CATEGORIES = frozenset({"config", "diagnostic"})

# mqtt.markdown, "Supported abbreviations in MQTT discovery messages": the entries whose
# full names are options of the four platforms modelled here, of the availability list
# items and of device-based discovery. ``obj_id`` is in the older tables, ``def_ent_id``
# in the current one.
ABBREVIATIONS: Mapping[str, str] = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "cmps": "components",
    "cont_type": "content_type",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "img_e": "image_encoding",
    "img_t": "image_topic",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template",
    "migr_discvry": "migrate_discovery",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "ops": "options",
    "p": "platform",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_prs": "payload_press",
    "ret": "retain",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "url_t": "url_topic",
    "url_tpl": "url_template",
    "val_tpl": "value_template",
}

# mqtt.markdown, "Supported abbreviations for device registry configuration".
DEVICE_ABBREVIATIONS: Mapping[str, str] = {
    "cu": "configuration_url",
    "cns": "connections",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "mdl_id": "model_id",
    "hw": "hw_version",
    "sw": "sw_version",
    "sa": "suggested_area",
    "sn": "serial_number",
}

# mqtt.markdown, "Supported abbreviations for origin info".
ORIGIN_ABBREVIATIONS: Mapping[str, str] = {"sw": "sw_version", "url": "support_url"}

# mqtt.markdown, "Device discovery payload": options at the root of a device message that
# its components share (besides the required ``device`` and ``origin``).
DEVICE_SHARED_OPTIONS = frozenset(
    {
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "command_topic",
        "state_topic",
        "qos",
        "encoding",
    }
)

_ID = re.compile(r"[a-zA-Z0-9_-]+")
_ICON = re.compile(r"[a-z0-9_-]+:[a-z0-9_-]+")  # e.g. mdi:camera
_MIME_IMAGE = re.compile(r"image/[A-Za-z0-9.+-]+")

# ---------------------------------------------------------------------------- models


class _Strict(BaseModel):
    """No unknown keys, no type coercion; a key given as JSON ``null`` must be one the
    docs say "can be `null`" (listed in ``NULLABLE``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _nulls_only_where_documented(self) -> Self:
        nulls = sorted(
            key
            for key in self.model_fields_set
            if getattr(self, key) is None and key not in self.NULLABLE
        )
        if nulls:
            raise ValueError(f"{', '.join(nulls)}: null is not a documented value")
        return self


class Availability(_Strict):
    """One item of the ``availability`` list."""

    topic: str
    payload_available: str | None = None  # default "online"
    payload_not_available: str | None = None  # default "offline"
    value_template: str | None = None


class Device(_Strict):
    """The ``device`` block (device registry). At least one of identifiers or
    connections must be present to identify the device."""

    configuration_url: str | None = None
    connections: list[list[str]] | None = None  # [[connection_type, connection_identifier]]
    hw_version: str | None = None
    identifiers: str | list[str] | None = None
    manufacturer: str | None = None
    model: str | None = None
    model_id: str | None = None
    name: str | None = None
    serial_number: str | None = None
    suggested_area: str | None = None
    sw_version: str | None = None
    via_device: str | None = None

    @field_validator("configuration_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://", "homeassistant://")):
            raise ValueError("must be an http://, https:// or homeassistant:// URL")
        return value

    @field_validator("connections")
    @classmethod
    def _pairs(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        if value is not None and any(len(pair) != 2 for pair in value):
            raise ValueError("must be a list of [connection_type, connection_identifier] pairs")
        return value

    @model_validator(mode="after")
    def _identified(self) -> Self:
        if not self.identifiers and not self.connections:
            raise ValueError("at least one of identifiers or connections must be present")
        return self


class Origin(_Strict):
    """The ``origin`` block: the application that published the discovery message."""

    name: str
    sw_version: str | None = None
    support_url: str | None = None


class _Entity(_Strict):
    """Options every modelled platform documents (and the availability options that
    mqtt.markdown documents for all MQTT entity platforms)."""

    COMPONENT: ClassVar[str] = ""
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"name"})

    availability: list[Availability] | None = Field(default=None, min_length=1)
    availability_mode: Literal["all", "any", "latest"] | None = None
    availability_template: str | None = None
    availability_topic: str | None = None
    payload_available: str | None = None
    payload_not_available: str | None = None
    default_entity_id: str | None = None
    device: Device | None = None
    enabled_by_default: bool | None = None
    encoding: str | None = None
    entity_category: str | None = None
    entity_picture: str | None = None
    icon: str | None = None
    json_attributes_template: str | None = None
    json_attributes_topic: str | None = None
    name: str | None = None  # null: the entity is the device's main feature
    object_id: str | None = None  # deprecated for default_entity_id
    origin: Origin | None = None
    platform: str | None = None  # only (and then required) in device-based discovery
    unique_id: str | None = None

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str | None) -> str | None:
        if value is not None and not _ICON.fullmatch(value):
            raise ValueError("must be an icon like 'mdi:camera'")
        return value

    @field_validator("entity_category")
    @classmethod
    def _category(cls, value: str | None) -> str | None:
        if value is not None and value not in ENTITY_CATEGORIES:
            raise ValueError(f"must be one of {sorted(ENTITY_CATEGORIES)}")
        return value

    @model_validator(mode="after")
    def _shared_rules(self) -> Self:
        if self.availability is not None and self.availability_topic is not None:
            raise ValueError("availability and availability_topic must not be used together")
        if self.device is not None and self.unique_id is None:
            raise ValueError("device only works when unique_id is set")
        if self.platform is not None and self.platform != self.COMPONENT:
            raise ValueError(f"platform must be {self.COMPONENT!r}, not {self.platform!r}")
        if self.default_entity_id is not None:
            domain, _, slug = self.default_entity_id.partition(".")
            if domain != self.COMPONENT or not slug:
                raise ValueError(
                    f"default_entity_id must be like '{self.COMPONENT}.foobar',"
                    f" not {self.default_entity_id!r}"
                )
        return self


def _device_class(value: str | None, allowed: frozenset[str], component: str) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(
            f"{value!r} is not a documented {component} device class;"
            f" documented: {', '.join(sorted(allowed))}"
        )
    return value


class ImageConfig(_Entity):
    """image.mqtt: exactly one of image_topic (raw image bytes, or base64 with
    image_encoding "b64") and url_topic (a URL to fetch)."""

    COMPONENT: ClassVar[str] = "image"

    content_type: str | None = None  # default image/jpeg; image_topic only
    image_encoding: Literal["b64"] | None = None
    image_topic: str | None = None
    url_template: str | None = None
    url_topic: str | None = None

    @field_validator("content_type")
    @classmethod
    def _mime(cls, value: str | None) -> str | None:
        if value is not None and not _MIME_IMAGE.fullmatch(value):
            raise ValueError("must be an image MIME type like 'image/jpeg'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.image_topic is None) == (self.url_topic is None):
            raise ValueError(
                "exactly one of image_topic and url_topic is required"
                " (they cannot be used together, and at least one is required)"
            )
        if self.url_topic is not None and self.content_type is not None:
            raise ValueError(
                "content_type cannot be used with url_topic (derived when downloading)"
            )
        if self.url_topic is not None and self.image_encoding is not None:
            raise ValueError("image_encoding applies to image_topic payloads, not url_topic")
        if self.image_topic is not None and self.url_template is not None:
            raise ValueError("url_template extracts the URL from url_topic messages")
        return self


class BinarySensorConfig(_Entity):
    """binary_sensor.mqtt: state_topic is required."""

    COMPONENT: ClassVar[str] = "binary_sensor"
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"name", "device_class"})

    state_topic: str
    device_class: str | None = None
    expire_after: int | None = Field(default=None, ge=0)
    force_update: bool | None = None
    off_delay: int | None = Field(default=None, ge=0)
    payload_off: str | None = None  # default "OFF"
    payload_on: str | None = None  # default "ON"
    qos: int | None = Field(default=None, ge=0, le=2)
    value_template: str | None = None

    @field_validator("device_class")
    @classmethod
    def _class(cls, value: str | None) -> str | None:
        return _device_class(value, BINARY_SENSOR_DEVICE_CLASSES, cls.COMPONENT)

    @field_validator("entity_category")
    @classmethod
    def _diagnostic(cls, value: str | None) -> str | None:
        if value is not None and value != "diagnostic":
            raise ValueError("when set, the entity category must be 'diagnostic' for sensors")
        return value


class SensorConfig(_Entity):
    """sensor.mqtt: state_topic is required; ``options`` needs device_class ``enum`` and
    excludes state_class and unit_of_measurement."""

    COMPONENT: ClassVar[str] = "sensor"
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"name", "device_class", "unit_of_measurement"})

    state_topic: str
    device_class: str | None = None
    expire_after: int | None = Field(default=None, ge=0)
    force_update: bool | None = None
    last_reset_value_template: str | None = None
    options: list[str] | None = Field(default=None, min_length=1)
    qos: int | None = Field(default=None, ge=0, le=2)
    state_class: str | None = None
    suggested_display_precision: int | None = Field(default=None, ge=0)
    unit_of_measurement: str | None = None
    value_template: str | None = None

    @field_validator("device_class")
    @classmethod
    def _class(cls, value: str | None) -> str | None:
        return _device_class(value, SENSOR_DEVICE_CLASSES, cls.COMPONENT)

    @field_validator("state_class")
    @classmethod
    def _state_class(cls, value: str | None) -> str | None:
        if value is not None and value not in SENSOR_STATE_CLASSES:
            raise ValueError(f"must be one of {sorted(SENSOR_STATE_CLASSES)}")
        return value

    @field_validator("entity_category")
    @classmethod
    def _diagnostic(cls, value: str | None) -> str | None:
        if value is not None and value != "diagnostic":
            raise ValueError("when set, the entity category must be 'diagnostic' for sensors")
        return value

    @model_validator(mode="after")
    def _sensor_rules(self) -> Self:
        if self.options is not None:
            if self.device_class != "enum":
                raise ValueError("options needs device_class 'enum'")
            if self.state_class is not None or "unit_of_measurement" in self.model_fields_set:
                raise ValueError(
                    "options cannot be used together with state_class or unit_of_measurement"
                )
        if self.last_reset_value_template is not None and self.state_class != "total":
            raise ValueError("last_reset_value_template needs state_class 'total'")
        return self


class ButtonConfig(_Entity):
    """button.mqtt: command_topic is required."""

    COMPONENT: ClassVar[str] = "button"
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"name", "device_class"})

    command_topic: str
    command_template: str | None = None
    device_class: str | None = None
    payload_press: str | None = None  # default "PRESS"
    qos: int | None = Field(default=None, ge=0, le=2)
    retain: bool | None = None

    @field_validator("device_class")
    @classmethod
    def _class(cls, value: str | None) -> str | None:
        return _device_class(value, BUTTON_DEVICE_CLASSES, cls.COMPONENT)


MODELS: Mapping[str, type[_Entity]] = {
    model.COMPONENT: model
    for model in (ImageConfig, BinarySensorConfig, SensorConfig, ButtonConfig)
}

# ---------------------------------------------------------------------------- checks


def parse_topic(topic: str, prefix: str = "homeassistant") -> tuple[str, str | None, str]:
    """``(component, node_id or None, object_id)`` of a discovery topic; AssertionError
    when it is not ``<prefix>/<component>/[<node_id>/]<object_id>/config`` with ids of
    ``[a-zA-Z0-9_-]``."""
    head = f"{prefix}/"
    if not topic.startswith(head):
        raise AssertionError(f"discovery topic {topic!r} does not start with {head!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) not in (3, 4) or parts[-1] != "config":
        raise AssertionError(
            f"discovery topic {topic!r} is not"
            f" '{prefix}/<component>/[<node_id>/]<object_id>/config'"
        )
    component, *ids, _ = parts
    for name, value in zip(("node_id", "object_id")[-len(ids) :], ids, strict=True):
        if not _ID.fullmatch(value):
            raise AssertionError(
                f"discovery topic {topic!r}: {name} {value!r} has characters outside [a-zA-Z0-9_-]"
            )
    node_id = ids[0] if len(ids) == 2 else None
    return component, node_id, ids[-1]


def _expand_keys(config: Mapping[str, Any], table: Mapping[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        full = table.get(key, key)
        if full in out:
            raise AssertionError(f"{where}: {full!r} is given twice (abbreviated and in full)")
        out[full] = value
    return out


def expand(config: Mapping[str, Any]) -> dict[str, Any]:
    """The payload with documented abbreviations written in full (entity keys, the
    ``device`` and ``origin`` blocks, availability items, device-based ``components``)."""
    out = _expand_keys(config, ABBREVIATIONS, "payload")
    if isinstance(out.get("device"), Mapping):
        out["device"] = _expand_keys(out["device"], DEVICE_ABBREVIATIONS, "device")
    if isinstance(out.get("origin"), Mapping):
        out["origin"] = _expand_keys(out["origin"], ORIGIN_ABBREVIATIONS, "origin")
    if isinstance(out.get("availability"), list):
        out["availability"] = [
            _expand_keys(item, ABBREVIATIONS, "availability item")
            if isinstance(item, Mapping)
            else item
            for item in out["availability"]
        ]
    if isinstance(out.get("components"), Mapping):
        out["components"] = {
            name: expand(part) if isinstance(part, Mapping) else part
            for name, part in out["components"].items()
        }
    return out


def _apply_base_topic(config: dict[str, Any], base: str) -> None:
    """mqtt.markdown: in options ending with ``_topic``, a ``~`` at the start or the end
    of the value is replaced by the base topic (availability items' ``topic`` too)."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("~"):
                return base + value[1:]
            if value.endswith("~"):
                return value[:-1] + base
        return value

    for key in list(config):
        if key.endswith("_topic"):
            config[key] = resolve(config[key])
    for item in config.get("availability") or []:
        if isinstance(item, dict) and "topic" in item:
            item["topic"] = resolve(item["topic"])


def _problems(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(payload)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  - {where}: not a documented option")
        elif problem["type"] == "missing":
            lines.append(f"  - {where}: required")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            got = f" (got {problem['input']!r})" if problem["loc"] else ""
            lines.append(f"  - {where}: {message}{got}")
    return "\n".join(lines)


def _validate(model: type[_Entity], config: dict[str, Any], what: str) -> None:
    try:
        model.model_validate(config)
    except ValidationError as error:
        raise AssertionError(
            f"{what} breaks Home Assistant's documented {model.COMPONENT} schema:\n"
            f"{_problems(error)}\npayload: {json.dumps(config, sort_keys=True)}"
        ) from None


def _check_device_message(config: dict[str, Any], topic: str) -> None:
    """mqtt.markdown, "Device discovery payload"."""
    for required in ("device", "origin", "components"):
        if required not in config:
            raise AssertionError(f"device discovery on {topic!r}: {required!r} is required")
    allowed = {"device", "origin", "components", *DEVICE_SHARED_OPTIONS}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise AssertionError(
            f"device discovery on {topic!r}: {unknown} are not documented shared options"
            f" (documented: {sorted(DEVICE_SHARED_OPTIONS)})"
        )
    components = config["components"]
    if not isinstance(components, dict) or not components:
        raise AssertionError(f"device discovery on {topic!r}: components must be a non-empty map")
    shared = {key: config[key] for key in DEVICE_SHARED_OPTIONS if key in config}
    for name, part in components.items():
        what = f"component {name!r} of the device discovery on {topic!r}"
        if not _ID.fullmatch(name):
            raise AssertionError(f"{what}: its id has characters outside [a-zA-Z0-9_-]")
        if not isinstance(part, dict):
            raise AssertionError(f"{what}: must be a map")
        platform = part.get("platform")
        if platform is None:
            raise AssertionError(f"{what}: platform (p) is required")
        if set(part) == {"platform"}:
            continue  # documented: removes this component from the device
        for fixed in ("device", "origin"):
            if fixed in part:
                raise AssertionError(f"{what}: {fixed} cannot be overridden per component")
        if platform not in MODELS:
            raise AssertionError(f"{what}: platform {platform!r} is not modelled here")
        if "unique_id" not in part:
            raise AssertionError(f"{what}: unique_id is required in device-based discovery")
        model = MODELS[platform]
        # A shared option reaches the components that have it (a button has no state_topic).
        inherited = {key: value for key, value in shared.items() if key in model.model_fields}
        merged = {**inherited, **part, "device": config["device"], "origin": config["origin"]}
        _validate(model, merged, what)


def check_discovery(
    component: str, topic: str, payload: bytes, *, prefix: str = "homeassistant"
) -> dict[str, Any]:
    """Check one discovery message against Home Assistant's documented schema and return
    its config with abbreviations and the base topic ``~`` expanded.

    ``component`` is ``image``, ``binary_sensor``, ``sensor``, ``button`` (single-component
    discovery) or ``device`` (device-based discovery, its ``components`` of those four
    platforms). Raises AssertionError, saying what is wrong, on any violation.
    """
    found, _, _ = parse_topic(topic, prefix)
    if found != component:
        raise AssertionError(f"discovery topic {topic!r} is for {found!r}, not {component!r}")
    if component != "device" and component not in MODELS:
        raise AssertionError(f"no schema for component {component!r}; modelled: {sorted(MODELS)}")
    if not payload:
        raise AssertionError(
            f"empty payload on {topic!r}: that removes the entity, it is no config"
        )
    try:
        config = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AssertionError(f"payload on {topic!r} is not UTF-8 JSON: {error}") from None
    if not isinstance(config, dict):
        raise AssertionError(f"payload on {topic!r} is not a JSON object: {config!r}")

    config = expand(config)
    base = config.pop("~", None)
    if base is not None:
        if not isinstance(base, str):
            raise AssertionError(f"payload on {topic!r}: the base topic '~' must be a string")
        _apply_base_topic(config, base)
        for part in (config.get("components") or {}).values():
            if isinstance(part, dict):
                _apply_base_topic(part, base)

    if component == "device":
        _check_device_message(config, topic)
    else:
        if "platform" in config:
            raise AssertionError(
                f"payload on {topic!r}: platform is only allowed in device-based discovery"
            )
        _validate(MODELS[component], config, f"{component} discovery on {topic!r}")
    return config


def render(template: str, payload: bytes) -> str | None:
    """A ``value_template`` rendered as Home Assistant renders it for an MQTT entity: with
    ``value`` and ``value_json``; a result of ``None`` is the entity's unknown state."""
    import jinja2  # moto's dependency: only the tests render templates

    text = payload.decode()
    try:
        value_json: Any = json.loads(text)
    except ValueError:
        value_json = None
    rendered = (
        jinja2.Environment(undefined=jinja2.StrictUndefined)
        .from_string(template)
        .render(value=text, value_json=value_json)
    )
    return None if rendered == "None" else rendered
