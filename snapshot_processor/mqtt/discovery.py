"""Home Assistant's MQTT discovery messages: one device for the daemon, and for each camera its
latest image, a person sensor, its last event, what was detected, its state and a button."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from snapshot_processor.mqtt.topics import (
    NOT_PERSON,
    OFFLINE,
    ONLINE,
    PRESS,
    MqttCamera,
    Topics,
)

APP = "snapshot-processor"
# A camera not probed yet is Home Assistant's own "unknown" (the state payload says null).
CAMERA_STATES = ("up", "down")


def version() -> str:
    try:
        return metadata.version(APP)
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def configs(
    topics: Topics, device_name: str, cameras: Iterable[MqttCamera], *, verdicts: bool = False
) -> dict[str, bytes]:
    """Every discovery message, by its topic, as the JSON Home Assistant reads; with
    ``verdicts`` (detection on), each camera has a "not a person" button too."""
    shared: dict[str, Any] = {
        "device": {
            "identifiers": [f"{APP}_{topics.node}"],
            "name": device_name,
            "manufacturer": APP,
            "model": "snapshot daemon",
            "sw_version": version(),
        },
        "origin": {"name": APP, "sw_version": version()},
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }
    found: dict[str, bytes] = {}

    def entity(component: str, object_id: str, **fields: Any) -> None:
        unique = f"{APP}_{topics.node}_{object_id}"
        body = {"unique_id": unique, **fields, **shared}
        found[topics.config(component, object_id)] = json.dumps(body, sort_keys=True).encode()

    entity(
        "binary_sensor",
        "problem",
        name="Problem",
        state_topic=topics.status,
        device_class="problem",
        value_template="{{ 'OFF' if value_json.ok else 'ON' }}",
        json_attributes_topic=topics.status,
        entity_category="diagnostic",
    )
    for camera in cameras:
        own = camera.slug
        entity(
            "image",
            f"{own}_image",
            name=camera.label,
            image_topic=topics.camera(camera, "image"),
            content_type="image/jpeg",
        )
        entity(
            "binary_sensor",
            f"{own}_person",
            name=f"{camera.label} person",
            state_topic=topics.camera(camera, "person"),
            device_class="occupancy",
            payload_on="ON",
            payload_off="OFF",
        )
        event = topics.camera(camera, "event")
        entity(
            "sensor",
            f"{own}_last_event",
            name=f"{camera.label} last event",
            state_topic=event,
            device_class="timestamp",
            value_template="{{ value_json.time }}",
            json_attributes_topic=event,
        )
        entity(
            "sensor",
            f"{own}_detected",
            name=f"{camera.label} detected",
            state_topic=event,
            value_template="{{ value_json.detected }}",
            icon="mdi:eye",
        )
        if verdicts:
            entity(
                "button",
                f"{own}_not_a_person",
                name=f"{camera.label} not a person",
                command_topic=topics.camera(camera, "verdict"),
                payload_press=NOT_PERSON,
                icon="mdi:account-off",
            )
        if not camera.fetched:
            continue  # pushed by FTP: no state to probe, nothing to ask for
        state = topics.camera(camera, "state")
        entity(
            "sensor",
            f"{own}_state",
            name=f"{camera.label} state",
            state_topic=state,
            device_class="enum",
            options=list(CAMERA_STATES),
            value_template="{{ value_json.state }}",
            json_attributes_topic=state,
            entity_category="diagnostic",
        )
        entity(
            "button",
            f"{own}_snapshot",
            name=f"{camera.label} take a snapshot",
            command_topic=topics.camera(camera, "snapshot"),
            payload_press=PRESS,
            icon="mdi:camera",
        )
    return found
