"""Triggers as the existing services send them: msgpack maps, validated into a Trigger."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from prometheus_client import Counter

from pylib.redact import register_secret
from snapshot_processor.messages import TriggerMessage

TRIGGERS = Counter("triggers_total", "Valid triggers received", ["camera"])

REQUIRED_OUTPUT_FIELDS = ("device_key", "device_type", "device_label")


class TriggerError(ValueError):
    """A trigger that can never be processed; ``reason`` is a short label for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Trigger:
    """A validated trigger: which camera, when, and the sender's camera address if any."""

    camera_key: str
    device_label: str
    timestamp: int
    device_params: str | None
    trigger_topic: str | None
    active_input: dict[str, Any]

    def message(self) -> TriggerMessage:
        """What the listener sends down the chain (the sender's sensor is not needed there)."""
        return TriggerMessage(
            camera_key=self.camera_key,
            device_label=self.device_label,
            timestamp=self.timestamp,
            device_params=self.device_params,
            trigger_topic=self.trigger_topic,
        )


def _field(mapping: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in mapping:
        raise TriggerError("missing_field", f"{where}{name} is missing")
    value = mapping[name]
    # bool is an int to Python, never a timestamp or a label here.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TriggerError("bad_field", f"{where}{name} has type bool")
    if not isinstance(value, kind):
        raise TriggerError("bad_field", f"{where}{name} has type {type(value).__name__}")
    return value


def parse_trigger(body: bytes, cameras: Mapping[str, str], max_bytes: int = 65_536) -> Trigger:
    """Validate a trigger body; ``cameras`` maps lower-cased keys to configured camera keys.

    Raises :class:`TriggerError` naming what is wrong; never echoes ``device_params``,
    which holds a password.
    """
    if len(body) > max_bytes:
        raise TriggerError("too_large", f"{len(body)} bytes, more than {max_bytes}")
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise TriggerError("not_msgpack", f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise TriggerError("not_a_map", f"body is a {type(data).__name__}, not a map")
    timestamp = _field(data, "timestamp", (int, float), "")
    if timestamp < 0:
        raise TriggerError("bad_field", "timestamp is negative")
    active_input = _field(data, "active_input", dict, "")
    output = _field(data, "output_triggered", dict, "")
    key, _, label = (
        _field(output, name, str, "output_triggered.") for name in REQUIRED_OUTPUT_FIELDS
    )
    params = output.get("device_params")
    if params is not None and not isinstance(params, str):
        raise TriggerError("bad_field", "output_triggered.device_params is not a string")
    if params:
        # Masked from here on, so no later log line or error report can carry it.
        register_secret(params.partition(":")[2].rpartition("@")[0] or params)
    topic = output.get("trigger_topic")
    if output.get("device_enabled") is False:
        raise TriggerError("disabled", f"camera {key!r} is disabled in the trigger")
    camera_key = cameras.get(key.strip().lower())
    if camera_key is None:
        raise TriggerError("unknown_camera", f"no camera output is configured with key {key!r}")
    TRIGGERS.labels(camera_key).inc()
    return Trigger(
        camera_key=camera_key,
        device_label=label or camera_key,
        timestamp=int(timestamp),
        device_params=params or None,
        trigger_topic=topic if isinstance(topic, str) else None,
        active_input=active_input,
    )
