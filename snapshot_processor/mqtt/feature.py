"""Home Assistant over MQTT as the daemon runs it: the link to the broker and the output that
keeps the entities, both beside the chain (off unless ``MQTT_URL`` is set)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pylib.runtime.daemon import Daemon
from snapshot_processor.camera.feature import Cameras
from snapshot_processor.camera.requests import SnapshotRequests
from snapshot_processor.config import Settings
from snapshot_processor.mqtt import topics as naming
from snapshot_processor.mqtt.discovery import configs
from snapshot_processor.mqtt.link import CONNECT_TIMEOUT, Broker, MqttLink
from snapshot_processor.mqtt.output import MqttOutput
from snapshot_processor.mqtt.settings import MqttSettings
from snapshot_processor.mqtt.topics import OFFLINE, Topics

# The daemon's health in short: healthy or not, its problems and its warnings.
HealthLines = Callable[[], tuple[bool, list[str], list[str]]]


@dataclass(frozen=True)
class Mqtt:
    link: MqttLink
    output: MqttOutput


def topics_of(settings: Settings) -> Topics:
    section = settings.mqtt
    return Topics(section.topic_prefix, naming.slug(settings.device_name), section.discovery_prefix)


def broker_of(settings: Settings) -> Broker:
    """Where and how to connect, from ``MQTT_*`` (which must be on)."""
    section = settings.mqtt
    topics = topics_of(settings)
    return Broker(
        host=section.host,
        port=section.port,
        tls=section.tls,
        user=section.user,
        password=section.password_value,
        ca_file=str(section.ca_file) if section.ca_file else None,
        client_id=f"{settings.app_name}-{topics.node}",
        will_topic=topics.availability,
        will_payload=OFFLINE.encode(),
    )


def build(
    settings: Settings,
    daemon: Daemon,
    *,
    cameras: Cameras,
    health: HealthLines,
    verdicts: Callable[[str, str, str], str] | None = None,
) -> Mqtt | None:
    """The link and the output, added to the daemon before the chain, so they stop after it
    (its last events are still shown); None without ``MQTT_URL``. The buttons work once
    :func:`press_into` names the chain's first stage."""
    section = settings.mqtt
    if not section.on:
        return None
    topics = topics_of(settings)
    found = naming.cameras(
        ((device.key, device.LOCATION) for device in settings.cameras),
        ((device.key, device.LOCATION) for device in settings.upload_cameras),
    )
    broker = broker_of(settings)
    # Neither is fatal to the daemon: past its restarts, a thread of these is only dead.
    link = MqttLink(
        "mqtt-link",
        daemon.stop_event,
        broker,
        retry=MqttSettings.RECONNECT,
        # A connection under way at a stop must end within the daemon's bound.
        connect_timeout=min(CONNECT_TIMEOUT, settings.shutdown_timeout / 4),
    )
    output = MqttOutput(
        daemon.stop_event,
        link,
        topics,
        found,
        configs(topics, settings.device_name, found, verdicts=verdicts is not None),
        person_hold=section.person_hold,
        requests=None,
        health=health,
        camera_status=cameras.prober.status,
        record=settings.snapshots_root_dir / "mqtt-entities.json",
        verdicts=verdicts,
    )
    daemon.add(link)
    daemon.add(output)
    return Mqtt(link, output)


def press_into(shown: Mqtt, settings: Settings, cameras: Cameras, snapshot_inbox: str) -> None:
    """Home Assistant's buttons send their triggers to ``snapshot_inbox`` (before the start)."""
    shown.output.requests = SnapshotRequests(
        snapshot_inbox,
        {device.key: device.LOCATION for device in settings.cameras},
        cameras.registry,
    )
