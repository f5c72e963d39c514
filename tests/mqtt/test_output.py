"""The MQTT output against a real Mosquitto (password, TLS): discovery as Home Assistant
documents it, the latest image and event, the person sensor's hold, camera states and the
daemon's health, a broker that comes and goes, and the entities of a removed camera."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from pylib.retry import RetryPolicy
from snapshot_processor.camera.prober import CameraStatus, Reason
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.mqtt.discovery import configs
from snapshot_processor.mqtt.link import Broker, MqttLink
from snapshot_processor.mqtt.output import MqttOutput
from snapshot_processor.mqtt.topics import MqttCamera, Topics, cameras
from tests.support.ftp import jpeg
from tests.support.ha_discovery import check_discovery, render
from tests.support.metrics import sample
from tests.support.mosquitto import Mosquitto, Subscriber, mosquitto  # noqa: F401
from tests.support.wait import wait_until

pytestmark = pytest.mark.mqtt

TOPICS = Topics("snapshot-processor", "garage", "homeassistant")
FOUND = cameras([("Yard camera", "Yard"), ("Gate camera", "Gate")], [("Shed camera", "Shed")])
YARD, GATE, SHED = FOUND
QUICK = RetryPolicy(first=0.1, maximum=0.5)


class Daemon:
    """What the output reads from the rest of the daemon, set by the test."""

    def __init__(self) -> None:
        self.ok = True
        self.problems: list[str] = []
        self.statuses: dict[str, CameraStatus] = {
            camera.key: status(camera.key, up=True) for camera in FOUND if camera.fetched
        }

    def health(self) -> tuple[bool, list[str], list[str]]:
        return self.ok, list(self.problems), []

    def camera_status(self) -> Mapping[str, CameraStatus]:
        return dict(self.statuses)


def status(key: str, *, up: bool, error: str | None = None) -> CameraStatus:
    now = time.time()
    return CameraStatus(
        key=key,
        up=up,
        reason=None if up else Reason.UNREACHABLE,
        last_error=error,
        last_seen=now if up else None,
        last_probe=now,
        since=now,
        last_failure=None if up else now,
        probe_call=None,
    )


def broker_of(mosquitto: Mosquitto, *, tls: bool = False, password: str | None = None) -> Broker:  # noqa: F811
    return Broker(
        host="127.0.0.1",
        port=mosquitto.tls_port if tls else mosquitto.port,
        tls=tls,
        user=mosquitto.user,
        password=mosquitto.password if password is None else password,
        ca_file=str(mosquitto.ca_file) if tls else None,
        client_id="snapshot-processor-garage",
        will_topic=TOPICS.availability,
        will_payload=b"offline",
    )


@contextmanager
def running(
    folder: Path,
    broker: Broker,
    daemon: Daemon,
    *,
    hold: float = 30.0,
    found: list[MqttCamera] = FOUND,
) -> Iterator[MqttOutput]:
    stop = threading.Event()
    link = MqttLink("mqtt-link", stop, broker, retry=QUICK)
    output = MqttOutput(
        stop,
        link,
        TOPICS,
        found,
        configs(TOPICS, "garage", found),
        person_hold=hold,
        requests=None,
        health=daemon.health,
        camera_status=daemon.camera_status,
        record=folder / "mqtt-entities.json",
    )
    link.start()
    try:
        output.start()
        try:
            yield output
        finally:
            assert output.stop_and_join(10)
    finally:
        assert link.stop_and_join(10)


def snapshot(
    camera: MqttCamera, *, person: bool = False, text: str = "x", annotated: Path | None = None
) -> SnapshotMessage:
    detections = (
        [{"label": "Person", "confidence": 97.5, "person": True, "box": [0.1, 0.1, 0.2, 0.5]}]
        if person
        else [{"label": "Car", "confidence": 80.0, "person": False}]
    )
    return SnapshotMessage(
        event_id=f"ev-{text}",
        camera_key=camera.key,
        device_label=camera.label,
        image=jpeg(text),
        taken=1_800_000_000.0,
        storage_path=f"/data/{text}.jpg",
        source="camera",
        detections=detections,
        analysed=True,
        annotated_path=str(annotated) if annotated else None,
        bundle_id="b-1",
    )


def test_discovery_is_what_home_assistant_documents_and_states_follow(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    daemon = Daemon()
    with Subscriber(mosquitto, ["homeassistant/#", "snapshot-processor/#"]) as seen:
        with running(tmp_path, broker_of(mosquitto), daemon):
            online = seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
            held = seen.retained("homeassistant/#")
            state = seen.retained("snapshot-processor/#")
        # After a clean stop, Home Assistant shows everything unavailable.
        seen.wait_for(TOPICS.availability, lambda m: m.payload == b"offline", since=online.received)
        gone = seen.retained(TOPICS.availability)

    expected = configs(TOPICS, "garage", FOUND)
    assert set(held) == set(expected)
    components: dict[str, int] = {}
    for topic, message in held.items():
        component = topic.split("/")[1]
        components[component] = components.get(component, 0) + 1
        body = check_discovery(component, topic, message.payload)
        assert body["availability_topic"] == TOPICS.availability
        assert body["device"]["identifiers"] == ["snapshot-processor_garage"]
    # Two fetched cameras with six entities, a pushed one with four, and the daemon's problem.
    assert components == {"image": 3, "binary_sensor": 4, "sensor": 8, "button": 2}
    unique = [json.loads(message.payload)["unique_id"] for message in held.values()]
    assert len(set(unique)) == len(unique)
    # Nothing happened yet: nobody seen, cameras up, the daemon healthy, and online.
    for camera in FOUND:
        assert state[TOPICS.camera(camera, "person")].payload == b"OFF"
    assert json.loads(state[TOPICS.camera(YARD, "state")].payload)["state"] == "up"
    assert TOPICS.camera(SHED, "state") not in state
    assert json.loads(state[TOPICS.status].payload) == {"ok": True, "problems": [], "warnings": []}
    assert state[TOPICS.availability].payload == b"online"
    assert gone[TOPICS.availability].payload == b"offline"


def test_an_event_shows_its_image_and_what_was_found_and_the_person_sensor_holds(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    annotated = tmp_path / "annotated.jpg"
    annotated.write_bytes(jpeg("boxes drawn"))
    with (
        Subscriber(mosquitto, ["snapshot-processor/#"]) as seen,
        running(tmp_path, broker_of(mosquitto), Daemon(), hold=1.0) as output,
    ):
        seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
        output.saw(snapshot(YARD, person=True, text="one", annotated=annotated))
        image = seen.wait_for(TOPICS.camera(YARD, "image"))
        on = seen.wait_for(TOPICS.camera(YARD, "person"), lambda m: m.payload == b"ON")
        event = seen.wait_for(TOPICS.camera(YARD, "event")).json()
        off = seen.wait_for(
            TOPICS.camera(YARD, "person"), lambda m: m.payload == b"OFF", since=on.received
        )
        # A car on the gate camera: its image, no person.
        output.saw(snapshot(GATE, text="car"))
        gate = seen.wait_for(TOPICS.camera(GATE, "event")).json()
        gate_image = seen.wait_for(TOPICS.camera(GATE, "image")).payload
        kept = seen.retained(TOPICS.camera(YARD, "image"))

    assert image.payload == annotated.read_bytes()  # the copy with the boxes drawn
    assert kept[TOPICS.camera(YARD, "image")].payload == image.payload  # for who comes later
    assert 0.8 <= off.received - on.received <= 4.0
    assert event == {
        "event_id": "ev-one",
        "camera": "Yard camera",
        "time": "2027-01-15T08:00:00+00:00",
        "detected": "Person",
        "person": True,
        "person_confidence": 97.5,
        "labels": ["Person"],
        "source": "camera",
        "storage_url": None,
        "bundle_id": "b-1",
    }
    assert gate["person"] is False
    assert gate["detected"] == "Car"
    assert gate_image == jpeg("car")  # no annotated copy: the image itself
    assert not [m for m in seen.messages(TOPICS.camera(GATE, "person")) if m.payload == b"ON"]


def test_a_new_person_before_the_hold_ends_keeps_the_sensor_on(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    with (
        Subscriber(mosquitto, ["snapshot-processor/#"]) as seen,
        running(tmp_path, broker_of(mosquitto), Daemon(), hold=2.0) as output,
    ):
        seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
        output.saw(snapshot(YARD, person=True, text="a"))
        on = seen.wait_for(TOPICS.camera(YARD, "person"), lambda m: m.payload == b"ON")
        time.sleep(0.5)
        output.saw(snapshot(YARD, person=True, text="b"))
        seen.wait_for(TOPICS.camera(YARD, "event"), lambda m: m.json()["event_id"] == "ev-b")
        off = seen.wait_for(
            TOPICS.camera(YARD, "person"), lambda m: m.payload == b"OFF", since=on.received
        )
    # Off a hold after the second person, not after the first.
    assert off.received - on.received >= 2.25


def test_camera_state_and_health_changes_are_sent(mosquitto: Mosquitto, tmp_path: Path) -> None:  # noqa: F811
    daemon = Daemon()
    with (
        Subscriber(mosquitto, ["snapshot-processor/#"]) as seen,
        running(tmp_path, broker_of(mosquitto), daemon),
    ):
        seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
        daemon.statuses[GATE.key] = status(GATE.key, up=False, error="connection refused")
        daemon.ok, daemon.problems = False, ["thread upload is dead"]
        down = seen.wait_for(TOPICS.camera(GATE, "state"), lambda m: m.json()["state"] == "down")
        health = seen.wait_for(TOPICS.status, lambda m: not m.json()["ok"])
    assert down.json()["reason"] == "unreachable"
    assert down.json()["last_error"] == "connection refused"
    assert health.json()["problems"] == ["thread upload is dead"]


def test_a_broker_that_comes_back_empty_gets_everything_again_and_only_the_newest_image(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    with running(tmp_path, broker_of(mosquitto), Daemon()) as output:
        assert wait_until(output.link.connected.is_set, 10)
        mosquitto.stop()  # no persistence: every retained message is gone
        assert wait_until(lambda: not output.link.connected.is_set(), 10)
        superseded = sample("mqtt_messages_superseded_total", kind="image")
        for text in ("first", "second", "third"):
            output.saw(snapshot(YARD, text=text))
        time.sleep(0.3)
        mosquitto.start()
        assert wait_until(output.link.connected.is_set, 15)
        with Subscriber(mosquitto, ["snapshot-processor/#", "homeassistant/#"]) as seen:
            image = seen.wait_for(TOPICS.camera(YARD, "image"))
            seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
            held = seen.retained("homeassistant/#")
            images = seen.messages(TOPICS.camera(YARD, "image"))
    # While the broker was away nothing was sent; on its return, the newest only.
    assert image.payload == jpeg("third")
    assert [m.payload for m in images] == [jpeg("third")]
    assert len(held) == len(configs(TOPICS, "garage", FOUND))
    assert (sample("mqtt_messages_superseded_total", kind="image")) == superseded  # never queued


def test_a_removed_cameras_entities_are_removed_at_the_next_start(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    with running(tmp_path, broker_of(mosquitto), Daemon()) as output:
        assert wait_until(output.link.connected.is_set, 10)
        output.saw(snapshot(GATE, text="gate"))
        with Subscriber(mosquitto, ["snapshot-processor/#"]) as seen:
            seen.wait_for(TOPICS.camera(GATE, "image"))
    # Someone else's entity under the same prefix stays.
    with Subscriber(mosquitto, ["x/#"]) as other:
        other.publish(
            "homeassistant/sensor/kitchen/temp/config", b'{"state_topic": "k"}', retain=True
        )

    without_gate = [YARD, SHED]
    with running(tmp_path, broker_of(mosquitto), Daemon(), found=without_gate) as output:
        assert wait_until(output.link.connected.is_set, 10)
        with Subscriber(mosquitto, ["x/#"]) as probe:
            assert wait_until(lambda: not any("gate" in topic for topic in probe.retained("#")), 10)
            held = probe.retained("#")
    assert set(configs(TOPICS, "garage", without_gate)) <= set(held)
    assert "homeassistant/sensor/kitchen/temp/config" in held
    assert TOPICS.camera(YARD, "person") in held


def test_over_tls_with_the_brokers_ca(mosquitto: Mosquitto, tmp_path: Path) -> None:  # noqa: F811
    with (
        Subscriber(mosquitto, ["snapshot-processor/#"]) as seen,
        running(tmp_path, broker_of(mosquitto, tls=True), Daemon()) as output,
    ):
        seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
        output.saw(snapshot(YARD, text="secure"))
        assert seen.wait_for(TOPICS.camera(YARD, "image")).payload == jpeg("secure")


def test_without_the_ca_the_certificate_is_named_as_the_trouble(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    broker = broker_of(mosquitto, tls=True)
    untrusted = Broker(**{**broker.__dict__, "ca_file": None})
    with running(tmp_path, untrusted, Daemon()) as output:
        assert wait_until(lambda: "certificate" in str(output.link.troubles()), 10)
        [trouble] = output.link.troubles()
    assert "TLS certificate is not trusted" in trouble
    assert f"127.0.0.1:{mosquitto.tls_port}" in trouble


def test_a_wrong_password_is_a_warning_said_once_and_never_shown(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-Password-42"
    failures = sample("mqtt_connection_failures_total")
    caplog.set_level(logging.DEBUG)
    with running(tmp_path, broker_of(mosquitto, password=wrong), Daemon()) as output:
        assert wait_until(lambda: (sample("mqtt_connection_failures_total")) >= failures + 3, 15)
        health = output.link.health()
    assert health.ok  # best effort: a warning, never a problem
    [warning] = health.warnings
    assert "refused us: not authorized" in warning
    assert health.detail["mqtt"]["connected"] is False
    said = [r.getMessage() for r in caplog.records if "refused us" in r.getMessage()]
    assert len(said) == 1
    assert wrong not in caplog.text


def test_a_camera_not_probed_yet_is_home_assistants_unknown(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    daemon = Daemon()
    daemon.statuses[GATE.key] = CameraStatus(
        GATE.key, None, None, None, None, None, None, None, None
    )
    state_config = json.loads(
        configs(TOPICS, "garage", FOUND)[TOPICS.config("sensor", "gate_camera_state")]
    )
    with (
        Subscriber(mosquitto, ["snapshot-processor/#"]) as seen,
        running(tmp_path, broker_of(mosquitto), daemon),
    ):
        gate = seen.wait_for(TOPICS.camera(GATE, "state"))
        yard = seen.wait_for(TOPICS.camera(YARD, "state"))
    assert gate.json()["state"] is None
    assert render(state_config["value_template"], gate.payload) is None  # unknown, not an option
    assert render(state_config["value_template"], yard.payload) == "up"
    assert "up" in state_config["options"]


def test_retained_commands_are_ignored_and_cleared_and_a_retained_birth_sends_nothing_again(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    command = TOPICS.camera(YARD, "snapshot")
    ignored = sample("mqtt_commands_total", result="ignored")
    with Subscriber(mosquitto, ["x/#"]) as other:
        other.publish(command, b"PRESS", retain=True)
        other.publish("homeassistant/status", b"online", retain=True)
    with Subscriber(mosquitto, ["homeassistant/#", "snapshot-processor/#"]) as seen:
        with running(tmp_path, broker_of(mosquitto), Daemon()):
            seen.wait_for(TOPICS.availability, lambda m: m.payload == b"online")
            assert wait_until(
                lambda: sample("mqtt_commands_total", result="ignored") == ignored + 1
            )
            seen.wait_for(command, lambda m: m.payload == b"")  # the clearing
            assert command not in seen.retained(command)
            time.sleep(0.5)  # what a second sending would have sent by now
        configs_sent = seen.messages("homeassistant/+/+/+/config")
    # Each discovery message once: the birth message the broker kept is not Home Assistant's.
    assert len(configs_sent) == len(configs(TOPICS, "garage", FOUND))
