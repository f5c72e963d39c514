"""Triggers as the existing services send them: msgpack maps, validated into a Trigger.

As the original, only ``timestamp`` and ``output_triggered``'s ``device_key`` and
``device_params`` are read; the rest is optional. Map keys need not be strings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
from prometheus_client import Counter

from pylib.observe.logs import printable
from pylib.observe.redact import register_secret
from snapshot_processor.contract.messages import TriggerMessage

TRIGGERS = Counter("triggers_total", "Valid triggers received", ["camera"])

#: Default of ``TRIGGER_MAX_BYTES``: the Java event processor's trigger for a camera input
#: carries the image (100-200 KB); a body is decoded whole, about its own size in memory.
DEFAULT_MAX_BYTES = 1_048_576

#: The last second of year 9999, the latest ``timestamp`` taken.
LATEST_SECONDS = 253_402_300_799


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
    # The sensor that fired (``active_input.device_key``) and the sender's W3C trace: what
    # the triggers of one sensor event share.
    sensor_key: str | None = None
    traceparent: str | None = None

    def message(self) -> TriggerMessage:
        """What the listener sends down the chain."""
        return TriggerMessage(**asdict(self), received=time.time())


def _field(mapping: Mapping[Any, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in mapping:
        raise TriggerError("missing_field", f"{where}{name} is missing")
    value = mapping[name]
    # bool is an int to Python, never a timestamp or a label here.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TriggerError("bad_field", f"{where}{name} has type bool")
    if not isinstance(value, kind):
        raise TriggerError("bad_field", f"{where}{name} has type {type(value).__name__}")
    return value


def _optional_str(mapping: Mapping[Any, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) else None


def unix_seconds(value: int | float | str) -> int:
    """A trigger's ``timestamp`` as whole unix seconds: a number of seconds, or an ISO-8601
    string with or without a fraction and with ``Z``, an offset or none (read as UTC)."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TriggerError("bad_field", "timestamp is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    else:
        seconds = float(value)
    # Beyond year 9999 a whole number no longer packs into the chain's messages.
    if not math.isfinite(seconds) or not 0 <= seconds <= LATEST_SECONDS:
        raise TriggerError("bad_field", "timestamp is not between 1970 and 9999")
    return int(seconds)


def parse_trigger(
    body: bytes, cameras: Mapping[str, str], max_bytes: int = DEFAULT_MAX_BYTES
) -> Trigger:
    """Validate a trigger body; ``cameras`` maps lower-cased keys to configured camera keys.

    Raises :class:`TriggerError` naming what is wrong, never echoing ``device_params``."""
    if len(body) > max_bytes:
        raise TriggerError("too_large", f"{len(body)} bytes, more than {max_bytes}")
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise TriggerError("not_msgpack", f"not msgpack: {type(exc).__name__}") from None
    except TypeError:
        # msgpack allows a map or a list as a map key; Python cannot hash one.
        raise TriggerError("bad_map_key", "a map key is a map or a list") from None
    if not isinstance(data, dict):
        raise TriggerError("not_a_map", f"body is a {type(data).__name__}, not a map")
    timestamp = unix_seconds(_field(data, "timestamp", (int, float, str), ""))
    output = _field(data, "output_triggered", dict, "")
    key = _field(output, "device_key", str, "output_triggered.")
    params = output.get("device_params")
    if params is not None and not isinstance(params, str):
        raise TriggerError("bad_field", "output_triggered.device_params is not a string")
    camera_key = cameras.get(key.strip().lower())
    if params and camera_key is not None:
        # Masked from here on, so no later log line or error report can carry it; only
        # for a configured camera, so strangers cannot grow the set without bound.
        register_secret(params.partition(":")[2].rpartition("@")[0] or params)
    if output.get("device_enabled") is False:
        raise TriggerError("disabled", f"camera '{printable(key)}' is disabled in the trigger")
    if camera_key is None:
        raise TriggerError(
            "unknown_camera", f"no camera output is configured with key '{printable(key)}'"
        )
    TRIGGERS.labels(camera_key).inc()
    sensor = data.get("active_input")
    return Trigger(
        camera_key=camera_key,
        device_label=_optional_str(output, "device_label") or camera_key,
        timestamp=timestamp,
        device_params=params or None,
        trigger_topic=_optional_str(output, "trigger_topic"),
        sensor_key=(_optional_str(sensor, "device_key") or "")[:256] or None
        if isinstance(sensor, dict)
        else None,
        traceparent=_optional_str(data, "traceparent"),
    )
