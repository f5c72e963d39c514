"""Home Assistant over MQTT in the whole daemon: the real RabbitMQ for triggers and events, a
loopback camera, and a real Mosquitto (password, TLS) or RabbitMQ's own MQTT plugin."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from snapshot_processor.app import App
from snapshot_processor.ingest.ftp import FtpServerThread
from tests.support.broker import Peer, delete_queue, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings, spawn_daemon
from tests.support.fakes.rekognition import FakeRekognition, label
from tests.support.ftp import connect, jpeg, upload
from tests.support.ha_discovery import check_discovery, render
from tests.support.metrics import sample, sample_gauge
from tests.support.mosquitto import Message, Mosquitto, Subscriber, mosquitto  # noqa: F401
from tests.support.rabbit_mqtt import RabbitMqttNode, rabbit_mqtt  # noqa: F401
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_for_text, wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = [pytest.mark.broker, pytest.mark.mqtt]

BASE = "snapshot-processor/garage"
IMAGE = f"{BASE}/front_door_camera/image"
EVENT = f"{BASE}/front_door_camera/event"
AVAILABILITY = f"{BASE}/availability"
FTP_PASSWORD = "up load:pw@1"


def mqtt_env(broker: Mosquitto, *, tls: bool = False) -> dict[str, str]:
    env = {"MQTT_URL": broker.url(tls=tls), "MQTT_PASSWORD": broker.password}
    if tls:
        env["MQTT_CA_FILE"] = str(broker.ca_file)
    return env


def fire(peer: Peer) -> None:
    peer.send_trigger(trigger_body("Front Door camera", device_params=None))


@pytest.fixture
def rekognition(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", fake.base_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
        yield fake


class Entities:
    """What Home Assistant knows of our entities: only what the discovery messages say."""

    def __init__(self, held: dict[str, Message]) -> None:
        self.configs: dict[str, dict[str, Any]] = {}
        for topic, message in held.items():
            body = check_discovery(topic.split("/")[1], topic, message.payload)
            self.configs[body["unique_id"]] = body

    def __getitem__(self, object_id: str) -> dict[str, Any]:
        return self.configs[f"snapshot-processor_garage_{object_id}"]


def test_home_assistant_shows_the_annotated_image_a_person_and_its_button_takes_one(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
    rekognition: FakeRekognition,
) -> None:
    rekognition.reply_labels([label("Person", 97.0, boxes=[(0.2, 0.2, 0.3, 0.6)])], [], [])
    exchange = unique_exchange()
    peer = Peer(exchange)
    ignored = sample("mqtt_commands_total", result="ignored")
    with CameraSimulator(user="admin", password=PASSWORD) as camera:
        settings = make_settings(
            tmp_path,
            exchange,
            OBJECT_DETECTION_ENABLED="true",
            AWS_DEFAULT_REGION="eu-west-1",
            MQTT_PERSON_HOLD="1",
            **camera_env(camera.port),
            **mqtt_env(mosquitto, tls=True),
        )
        try:
            with (
                Subscriber(mosquitto, ["homeassistant/#", f"{BASE}/#"]) as seen,
                running_app(settings) as app,
            ):
                seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
                ha = Entities(seen.retained("homeassistant/#"))
                image, person = ha["front_door_camera_image"], ha["front_door_camera_person"]
                last, found = ha["front_door_camera_last_event"], ha["front_door_camera_detected"]
                state, button = ha["front_door_camera_state"], ha["front_door_camera_snapshot"]
                up = seen.wait_for(state["state_topic"], lambda m: m.json()["state"] is not None)
                fire(peer)
                [event] = peer.wait_for_images(1)
                shown = seen.wait_for(image["image_topic"])
                on = seen.wait_for(person["state_topic"], lambda m: m.text == person["payload_on"])
                when = seen.wait_for(last["state_topic"])
                seen.wait_for(
                    person["state_topic"],
                    lambda m: m.text == person["payload_off"],
                    since=on.received,
                )
                # Home Assistant's button: a snapshot like any trigger's, with its own event.
                seen.publish(button["command_topic"], button["payload_press"])
                assert peer.pump_until(lambda: len(peer.images()) == 2, 15)
                pressed = peer.images()[1]["inputs"][0]
                seen.wait_for(
                    last["state_topic"], lambda m: m.json()["event_id"] == pressed["event_id"]
                )
                # Anything else on the button's topic does nothing, and is counted.
                seen.publish(button["command_topic"], b"press me")
                assert wait_until(
                    lambda: sample("mqtt_commands_total", result="ignored") == ignored + 1
                )
                report = app.report()
                assert sample_gauge("mqtt_connected") == 1
        finally:
            peer.close()

    entry = event["inputs"][0]
    assert entry["detections"][0]["label"] == "Person"
    annotated = Path(entry["annotated_path"])
    assert shown.payload == annotated.read_bytes() != entry["image"]  # the boxes drawn
    assert image["content_type"] == "image/jpeg"
    moment = render(last["value_template"], when.payload)
    assert moment is not None
    assert datetime.fromisoformat(moment).tzinfo is not None
    assert render(found["value_template"], when.payload) == "Person"
    assert render(state["value_template"], up.payload) in state["options"]
    assert when.json()["event_id"] == entry["event_id"]
    assert pressed["device_key"] == "Front Door camera"
    assert report.detail["mqtt"]["connected"] is True
    assert not [line for line in report.warnings if "MQTT" in line]


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


def test_an_mqtt_broker_slow_killed_or_away_holds_no_trigger_and_no_event(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    exchange = unique_exchange()
    peer = Peer(exchange)
    sent = 0
    with (
        CameraSimulator(user="admin", password=PASSWORD) as camera,
        TcpProxy("127.0.0.1", mosquitto.port) as proxy,
    ):
        settings = make_settings(
            tmp_path,
            exchange,
            **camera_env(camera.port),
            MQTT_URL=f"mqtt://{mosquitto.user}@127.0.0.1:{proxy.port}",
            MQTT_PASSWORD=mosquitto.password,
        )
        try:
            with running_app(settings) as app:
                link = next(w for w in app.workers if w.name == "mqtt-link")
                for trouble in ("none", "slow", "killed", "back"):
                    if trouble == "slow":  # the broker takes nothing more, nor answers
                        proxy.stall()
                    if trouble == "killed":
                        proxy.restore()
                        mosquitto.kill()
                    if trouble == "back":
                        mosquitto.start()
                    for _ in range(5):
                        fire(peer)
                        sent += 1
                        time.sleep(0.1)
                    # Every event is out while the MQTT broker is in trouble too.
                    count = sent
                    assert peer.pump_until(lambda: len(peer.images()) == count, 20), (  # noqa: B023
                        f"{trouble}: {len(peer.images())} of {sent} events"
                    )
                    if trouble == "killed":
                        assert wait_until(lambda: not link.connected.is_set(), 10)  # type: ignore[attr-defined]
                        assert sample_gauge("mqtt_connected") == 0
                        assert any("MQTT broker" in line for line in app.report().warnings)
                assert wait_until(link.connected.is_set, 15)  # type: ignore[attr-defined]
                last = peer.images()[-1]["inputs"][0]
                # The broker came back empty; the latest state is there again.
                with Subscriber(mosquitto, [f"{BASE}/#", "homeassistant/#"]) as seen:
                    shown = seen.wait_for(EVENT, lambda m: m.json()["event_id"] == last["event_id"])
                    image = seen.wait_for(IMAGE)
                    seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
                    held = seen.retained("homeassistant/#")
        finally:
            peer.close()
    assert sent == 20
    assert shown.retain
    assert image.payload == last["image"]
    assert len(held) == 7  # the daemon's problem sensor and the camera's six entities


def test_the_daemon_stops_within_its_bound_while_the_mqtt_broker_never_answers(
    tmp_path: Path,
) -> None:
    # A port whose queue of connections is full: a connection attempt waits, unanswered.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        port = hole.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            settings = make_settings(
                tmp_path,
                unique_exchange(),
                SHUTDOWN_TIMEOUT="2",
                OUTPUT_1_LOCATION="Front Door",
                OUTPUT_1_TYPE="camera",
                MQTT_URL=f"mqtt://daemon@127.0.0.1:{port}",
                MQTT_PASSWORD="not-used-9",
            )
            app = App(settings)
            daemon = app.build()
            daemon.start()
            try:
                time.sleep(1.0)  # the link is in the middle of a connection attempt
            finally:
                started = time.monotonic()
                stopped = daemon.stop()
                took = time.monotonic() - started
                delete_queue(settings.queue_name)
        finally:
            for filler in fillers:
                filler.close()
    assert stopped
    assert took < 2.5


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
                # Home Assistant subscribes with wildcards, so it learns our entities when
                # it announces itself and we send them all again.
                with Subscriber(rabbit_mqtt, ["homeassistant/+/+/+/config"]) as home_assistant:
                    home_assistant.publish("homeassistant/status", b"online")
                    learnt = home_assistant.wait_for(discovery)
                    assert wait_until(
                        lambda: len({m.topic for m in home_assistant.messages()}) == 7
                    )
        finally:
            peer.close()
    assert learnt.payload == config.payload
    check_discovery("image", discovery, config.payload)
    assert image.payload == event["inputs"][0]["image"]


def test_a_camera_that_pushes_by_ftp_has_its_image_and_event_but_no_button(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    exchange = unique_exchange()
    peer = Peer(exchange)
    settings = make_settings(
        tmp_path,
        exchange,
        INPUT_1_LOCATION="Garden",
        INPUT_1_TYPE="camera",
        FTP_PASS=FTP_PASSWORD,
        FTP_PORT="0",
        FTP_LISTEN_ADDRESS="127.0.0.1",
        **mqtt_env(mosquitto),
    )
    garden = f"{BASE}/garden_camera"
    try:
        with (
            Subscriber(mosquitto, ["homeassistant/#", f"{BASE}/#"]) as seen,
            running_app(settings) as app,
        ):
            seen.wait_for(AVAILABILITY, lambda m: m.payload == b"online")
            held = seen.retained("homeassistant/#")
            ftp = next(w for w in app.workers if isinstance(w, FtpServerThread))
            assert ftp.ready.wait(5)
            assert ftp.bound is not None
            client = connect(ftp.bound[1], "camera", FTP_PASSWORD)
            try:
                upload(client, "/upload/garden/snap.jpg", jpeg("garden"))
            finally:
                client.quit()
            [event] = peer.wait_for_images(1)
            image = seen.wait_for(f"{garden}/image")
            shown = seen.wait_for(f"{garden}/event").json()
    finally:
        peer.close()
    components = sorted(topic.split("/")[1] for topic in held if "garden" in topic)
    assert components == ["binary_sensor", "image", "sensor", "sensor"]
    assert image.payload == event["inputs"][0]["image"] == jpeg("garden")
    assert shown["event_id"] == event["inputs"][0]["event_id"]
    assert shown["source"] == event["inputs"][0]["source"]
