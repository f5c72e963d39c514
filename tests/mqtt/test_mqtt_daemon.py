"""Home Assistant over MQTT in the whole daemon: the real RabbitMQ for triggers and events, a
loopback camera, and a real Mosquitto (password, TLS) or RabbitMQ's own MQTT plugin."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings, spawn_daemon
from tests.support.ha_discovery import check_discovery
from tests.support.mosquitto import Mosquitto, Subscriber, mosquitto  # noqa: F401
from tests.support.rabbit_mqtt import RabbitMqttNode, rabbit_mqtt  # noqa: F401
from tests.support.wait import wait_for_text, wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = [pytest.mark.broker, pytest.mark.mqtt]

BASE = "snapshot-processor/garage"
IMAGE = f"{BASE}/front_door_camera/image"
EVENT = f"{BASE}/front_door_camera/event"
BUTTON = f"{BASE}/front_door_camera/snapshot"
AVAILABILITY = f"{BASE}/availability"


def mqtt_env(broker: Mosquitto, *, tls: bool = False) -> dict[str, str]:
    env = {"MQTT_URL": broker.url(tls=tls), "MQTT_PASSWORD": broker.password}
    if tls:
        env["MQTT_CA_FILE"] = str(broker.ca_file)
    return env


def fire(peer: Peer) -> None:
    peer.send_trigger(trigger_body("Front Door camera", device_params=None))


def test_a_trigger_shows_its_image_in_home_assistant_and_the_button_takes_one(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    exchange = unique_exchange()
    peer = Peer(exchange)
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path, exchange, **camera_env(camera.port), **mqtt_env(mosquitto, tls=True)
        )
        try:
            with (
                Subscriber(mosquitto, ["homeassistant/#", f"{BASE}/#"]) as seen,
                running_app(settings),
            ):
                seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
                held = seen.retained("homeassistant/#")
                fire(peer)
                [event] = peer.wait_for_images(1)
                image = seen.wait_for(IMAGE)
                shown = seen.wait_for(EVENT).json()
                # Home Assistant's button: a snapshot like any trigger's, with its own event.
                seen.publish(BUTTON, b"PRESS")
                assert peer.pump_until(lambda: len(peer.images()) == 2, 15)
                pressed = peer.images()[1]["inputs"][0]
                seen.wait_for(EVENT, lambda m: m.json()["event_id"] == pressed["event_id"])
                # Anything else on the button's topic does nothing.
                seen.publish(BUTTON, b"press me")
                peer.pump(1.0)
                assert len(peer.images()) == 2
        finally:
            peer.close()

    for topic, message in held.items():
        check_discovery(topic.split("/")[1], topic, message.payload)
    assert "homeassistant/button/garage/front_door_camera_snapshot/config" in held
    entry = event["inputs"][0]
    assert image.payload == entry["image"]  # detection is off: the image itself
    assert shown["event_id"] == entry["event_id"]
    assert shown["camera"] == "Front Door camera"
    assert pressed["device_key"] == "Front Door camera"


def test_availability_goes_offline_when_the_daemon_is_killed(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    env = {
        "RABBITMQ_EXCHANGE": unique_exchange(),
        "DEVICE_NAME": "garage",
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "HTTP_PORT": "0",
        "OUTPUT_1_LOCATION": "Front Door",
        "OUTPUT_1_TYPE": "camera",
        **mqtt_env(mosquitto),
    }
    log = tmp_path / "daemon.log"
    with Subscriber(mosquitto, [f"{BASE}/#"]) as seen:
        daemon = spawn_daemon(env, log)
        try:
            assert wait_for_text(log, "MQTT: connected"), log.read_text()
            online = seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            # The broker publishes our last will when the connection drops unannounced.
            offline = seen.wait_for(
                AVAILABILITY, lambda m: m.payload == b"offline", since=online.received
            )
            held = seen.retained(AVAILABILITY)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
    assert offline.received - online.received < 15
    assert held[AVAILABILITY].payload == b"offline"
    assert PASSWORD not in log.read_text()
    assert mosquitto.password not in log.read_text()


def test_an_mqtt_broker_that_stops_and_starts_holds_no_trigger_and_no_event(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    exchange = unique_exchange()
    peer = Peer(exchange)
    sent = 0
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path, exchange, **camera_env(camera.port), **mqtt_env(mosquitto)
        )
        try:
            with running_app(settings) as app:
                for round_ in range(3):
                    if round_ == 1:
                        mosquitto.stop()
                    if round_ == 2:
                        mosquitto.start()
                    for _ in range(5):
                        fire(peer)
                        sent += 1
                        time.sleep(0.1)
                    # Every event is out while the MQTT broker is away too.
                    count = sent
                    assert peer.pump_until(lambda: len(peer.images()) == count, 20), (  # noqa: B023
                        f"{len(peer.images())} of {sent} events"
                    )
                link = next(w for w in app.workers if w.name == "mqtt-link")
                assert wait_until(link.connected.is_set, 15)  # type: ignore[attr-defined]
                last = peer.images()[-1]["inputs"][0]
                # The broker came back empty; the latest state is there again.
                with Subscriber(mosquitto, [f"{BASE}/#"]) as seen:
                    shown = seen.wait_for(EVENT, lambda m: m.json()["event_id"] == last["event_id"])
                    image = seen.wait_for(IMAGE)
                    seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
        finally:
            peer.close()
    assert sent == 15
    assert shown.retain
    assert image.payload == last["image"]


def test_rabbitmqs_own_mqtt_plugin_serves_home_assistant_too(
    tmp_path: Path,
    rabbit_mqtt: RabbitMqttNode,  # noqa: F811
) -> None:
    exchange = unique_exchange()
    peer = Peer(exchange)
    discovery = "homeassistant/image/garage/front_door_camera_image/config"
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            exchange,
            **camera_env(camera.port),
            MQTT_URL=rabbit_mqtt.url(),
            MQTT_PASSWORD=rabbit_mqtt.password,
        )
        try:
            # RabbitMQ sends retained messages to exact topics only, as here.
            with (
                running_app(settings),
                Subscriber(rabbit_mqtt, [discovery, IMAGE, AVAILABILITY]) as seen,
            ):
                seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
                config = seen.wait_for(discovery)
                fire(peer)
                [event] = peer.wait_for_images(1)
                image = seen.wait_for(IMAGE)
        finally:
            peer.close()
    check_discovery("image", discovery, config.payload)
    assert image.payload == event["inputs"][0]["image"]
