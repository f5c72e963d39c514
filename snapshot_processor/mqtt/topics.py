"""Where everything goes on the MQTT broker: our state topics and Home Assistant's discovery
topics, named from the daemon's DEVICE_NAME and each camera's key."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Home Assistant's node and object ids allow [a-zA-Z0-9_-]; MQTT wildcards and RabbitMQ's
# dot are kept out of our topics by the same rule.
_NOT_ID = re.compile(r"[^a-z0-9]+")

PRESS = "PRESS"
NOT_PERSON = "not_person"
ONLINE = "online"
OFFLINE = "offline"


def slug(text: str) -> str:
    """``Front Door camera`` → ``front_door_camera``."""
    return _NOT_ID.sub("_", text.lower()).strip("_") or "x"


@dataclass(frozen=True)
class MqttCamera:
    """A camera as Home Assistant sees it: fetched ones have a state and a button."""

    key: str
    label: str
    slug: str
    fetched: bool


def cameras(
    fetched: Iterable[tuple[str, str]], pushed: Iterable[tuple[str, str]]
) -> list[MqttCamera]:
    """Each camera once, by key (named by its LOCATION, or by its key where two share one); a
    camera both fetched and pushed is fetched. Two keys with one slug each get a short hash of
    their key, so ids stay apart."""
    found: dict[str, MqttCamera] = {}
    for key, label in fetched:
        found.setdefault(key, MqttCamera(key, label, slug(key), fetched=True))
    for key, label in pushed:
        found.setdefault(key, MqttCamera(key, label, slug(key), fetched=False))
    labels: dict[str, int] = {}
    for camera in found.values():
        labels[camera.label] = labels.get(camera.label, 0) + 1
    found = {
        key: camera
        if labels[camera.label] == 1
        else MqttCamera(key, key, camera.slug, camera.fetched)
        for key, camera in found.items()
    }
    counts: dict[str, int] = {}
    for camera in found.values():
        counts[camera.slug] = counts.get(camera.slug, 0) + 1
    return [
        camera
        if counts[camera.slug] == 1
        else MqttCamera(
            camera.key,
            camera.label,
            f"{camera.slug}_{hashlib.sha256(camera.key.encode()).hexdigest()[:6]}",
            camera.fetched,
        )
        for camera in found.values()
    ]


@dataclass(frozen=True)
class Topics:
    """``<topic prefix>/<node>/…`` for state, ``<discovery prefix>/<component>/<node>/…`` for
    Home Assistant."""

    prefix: str
    node: str
    discovery: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def status(self) -> str:
        """The daemon's health, as JSON."""
        return f"{self.base}/status"

    def camera(self, camera: MqttCamera, what: str) -> str:
        """``image``, ``person``, ``event``, ``state`` or ``snapshot`` (the button's command)."""
        return f"{self.base}/{camera.slug}/{what}"

    @property
    def commands(self) -> str:
        """Every camera's button."""
        return f"{self.base}/+/snapshot"

    @property
    def verdicts(self) -> str:
        """Every camera's "not a person" button: a verdict on its latest event."""
        return f"{self.base}/+/verdict"

    def config(self, component: str, object_id: str) -> str:
        return f"{self.discovery}/{component}/{self.node}/{object_id}/config"

    @property
    def home_assistant_status(self) -> tuple[str, ...]:
        """Home Assistant's birth message: on ``online``, it has just (re)started. Its topic
        stays ``homeassistant/status`` when only the discovery prefix was changed."""
        return tuple(dict.fromkeys((f"{self.discovery}/status", "homeassistant/status")))
