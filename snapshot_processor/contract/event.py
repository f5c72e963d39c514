"""The messages this daemon publishes, exactly as the existing services read them."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgpack

from snapshot_processor.config import Device

CAMERA_TYPE = "camera"


def iso_utc(when: datetime | None = None) -> str:
    """ISO-8601 UTC ending in ``Z``, as the wire contract's ``timestamp``."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def trigger_routing_key(topic: str) -> str:
    """Key of the triggers we consume on ``<exchange>_control``."""
    return f"event.trigger.{topic}"


def image_routing_key(topic: str, device_name: str) -> str:
    """Key of the image events we publish on ``<exchange>``."""
    return f"event.notify.{topic}.{device_name}.image"


def bundle_routing_key(topic: str, device_name: str) -> str:
    """Key of the bundle events we publish on ``<exchange>``."""
    return f"event.notify.{topic}.{device_name}.bundle"


def bundle_event(manifest: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The bundle event map: ``timestamp`` as an image event's, an empty ``inputs`` (a
    consumer bound to ``#`` that reads every message as an image event finds nothing to
    act on) and the manifest's fields."""
    return {"timestamp": iso_utc(now), "inputs": [], **manifest}


def heartbeat_routing_key(topic: str) -> str:
    """Key of the heartbeat we publish on ``<exchange>``."""
    return f"event.heartbeat.{topic}"


def person_detail(detections: Iterable[dict[str, Any]]) -> str | None:
    """``"2 person(s) and 5 things"`` (person detections, distinct labels) if any, else None."""
    people = 0
    labels: set[str] = set()
    for detection in detections:
        people += bool(detection.get("person"))
        labels.add(str(detection.get("label")))
    return f"{people} person(s) and {len(labels)} things" if people else None


def image_event(
    *,
    event_id: str,
    device_key: str,
    device_label: str,
    image: bytes,
    image_time: float,
    storage_path: str,
    source: str,
    storage_url: str | None = None,
    detections: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The image event map: the original fields, plus ``event_id``, ``source`` and ``detections``."""
    entry: dict[str, Any] = {
        "device_key": device_key,
        "device_label": device_label,
        "type": CAMERA_TYPE,
        "image": image,
        "image_timestamp": str(int(image_time)),
        "storage_url": storage_url,
        "storage_path": storage_path,
        "detections": detections or [],
        "source": source,
        "event_id": event_id,
    }
    detail = person_detail(detections or [])
    if detail is not None:
        entry["event_detail"] = detail
    if extra:
        entry.update(extra)
    return {"timestamp": iso_utc(now), "event_id": event_id, "source": source, "inputs": [entry]}


def _device_map(device: Device) -> dict[str, str]:
    return {"type": device.TYPE, "location": device.LOCATION, "device_key": device.key}


def heartbeat(
    inputs: Iterable[Device],
    outputs: Iterable[Device],
    now: datetime | None = None,
    *,
    camera_health: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The heartbeat map listing this daemon's inputs and outputs; a camera output the prober
    knows gets an added ``health`` map (``state``, ``reason``, ``last_seen`` in ISO-8601 UTC)."""
    health = camera_health or {}
    found = []
    for device in outputs:
        entry: dict[str, Any] = _device_map(device)
        known = health.get(device.key)
        if known is not None:
            entry["health"] = {key: known.get(key) for key in ("state", "reason", "last_seen")}
        found.append(entry)
    return {
        "timestamp": iso_utc(now),
        "inputs": [_device_map(device) for device in inputs],
        "outputs": found,
    }


def pack(message: dict[str, Any]) -> bytes:
    """msgpack with bytes as bin, as the Java and Python consumers expect."""
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def _bin_header(size: int) -> bytes:
    if size < 1 << 8:
        return struct.pack(">BB", 0xC4, size)
    if size < 1 << 16:
        return struct.pack(">BH", 0xC5, size)
    return struct.pack(">BI", 0xC6, size)


def pack_image_event(event: dict[str, Any]) -> tuple[bytes, int]:
    """An image event packed as :func:`pack` does, and where its image's bytes start.

    A random marker stands in for the image, so its place is found without searching the image."""
    entry = event["inputs"][0]
    image: bytes = entry["image"]
    marker = random.randbytes(16)
    packed = pack({**event, "inputs": [{**entry, "image": marker}, *event["inputs"][1:]]})
    marked = _bin_header(len(marker)) + marker
    at = packed.index(marked)
    head = _bin_header(len(image))
    body = b"".join((packed[:at], head, image, packed[at + len(marked) :]))
    return body, at + len(head)
