"""Verdicts in the whole daemon: from the bus (``event.feedback.<topic>`` on the control
exchange) and from Home Assistant's "not a person" button, into the labelled set; every
delivery settled, whatever it holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pika
import pytest

from snapshot_processor.contract.exchanges import feedback_queue
from snapshot_processor.detection.labelled import read_entries
from tests.support.broker import (
    BROKER,
    Peer,
    delete_queue,
    running_app,
    trigger_body,
    unique_exchange,
)
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.ha_discovery import check_discovery
from tests.support.metrics import sample
from tests.support.mosquitto import Mosquitto, Subscriber, mosquitto  # noqa: F401
from tests.support.wait import wait_until
from tools.brightness_model import brightness_model, grey
from tools.camera_simulator import CameraSimulator

pytestmark = [pytest.mark.broker, pytest.mark.mqtt, pytest.mark.local_extra]

BASE = "snapshot-processor/garage"
CONFIG = "homeassistant/button/garage/yard_camera_not_a_person/config"


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD, image=grey(235)) as simulator:
        yield simulator


def verdicts(root: Path) -> dict[str, tuple[str, str]]:
    return {entry.event_id: (entry.verdict, entry.source) for entry in read_entries(root)}


def test_verdicts_from_the_bus_and_home_assistant_land_in_the_labelled_set(
    tmp_path: Path,
    camera: CameraSimulator,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        **camera_env(camera.port, location="Yard"),
        OBJECT_DETECTION_ENABLED="true",
        OBJECT_DETECTION_BACKEND="onnx",
        ONNX_MODEL_PATH=str(brightness_model(tmp_path / "brightness.onnx")),
        ONNX_LABELS="person",
        DETECTION_DEDUPE_SECONDS="0",
        MQTT_URL=mosquitto.url(),
        MQTT_PASSWORD=mosquitto.password,
    )
    unknown = sample("detection_feedback_refused_total", source="bus", reason="unknown_event")
    rejected = sample(
        "amqp_messages_rejected_total", queue=feedback_queue(settings), reason="bad_verdict"
    )
    unreadable = sample(
        "amqp_messages_rejected_total", queue=feedback_queue(settings), reason="not_msgpack"
    )
    peer = Peer(exchange)
    sender = pika.BlockingConnection(BROKER)
    channel = sender.channel()

    def say(body: bytes) -> None:
        channel.basic_publish(f"{exchange}_control", "event.feedback.snapshot", body)

    try:
        with (
            Subscriber(mosquitto, ["homeassistant/#", f"{BASE}/#"]) as seen,
            running_app(settings),
        ):
            seen.wait_for(f"{BASE}/availability", lambda m: m.payload == b"online")
            button = check_discovery("button", CONFIG, seen.wait_for(CONFIG).payload)
            peer.send_trigger(trigger_body("Yard camera", device_params=None))
            assert peer.pump_until(lambda: len(peer.images()) == 1, 15)
            first = peer.images()[0]["inputs"][0]
            assert first["detections"][0]["person"] is True

            # From the bus: one that cannot be read, one of no event of ours, then a good one.
            say(b"\xc1 not msgpack")
            say(msgpack.packb({"event_id": first["event_id"], "verdict": "maybe"}))
            say(msgpack.packb({"event_id": "0" * 32, "verdict": "person"}))
            say(msgpack.packb({"event_id": first["event_id"], "verdict": "not_person"}))
            assert wait_until(lambda: first["event_id"] in verdicts(tmp_path), 15)

            # From Home Assistant: "not a person" on the camera's latest event.
            peer.send_trigger(trigger_body("Yard camera", device_params=None))
            assert peer.pump_until(lambda: len(peer.images()) == 2, 15)
            second = peer.images()[1]["inputs"][0]
            seen.wait_for(
                f"{BASE}/yard_camera/event", lambda m: m.json()["event_id"] == second["event_id"]
            )
            seen.publish(button["command_topic"], button["payload_press"])
            assert wait_until(lambda: second["event_id"] in verdicts(tmp_path), 15)
        # Stopped: anything unsettled would be back in the queue now.
        held = channel.queue_declare(feedback_queue(settings), passive=True).method.message_count
    finally:
        sender.close()
        peer.close()
        delete_queue(feedback_queue(settings))

    assert verdicts(tmp_path) == {
        first["event_id"]: ("not_person", "bus"),
        second["event_id"]: ("not_person", "home_assistant"),
    }
    [kept] = [e for e in read_entries(tmp_path) if e.event_id == first["event_id"]]
    assert kept.path.read_bytes() == first["image"]  # the original, not the annotated copy
    assert kept.decided_by == "onnx"
    assert held == 0
    assert (
        sample("detection_feedback_refused_total", source="bus", reason="unknown_event")
        == unknown + 1
    )
    assert (
        sample("amqp_messages_rejected_total", queue=feedback_queue(settings), reason="bad_verdict")
        == rejected + 1
    )
    assert (
        sample("amqp_messages_rejected_total", queue=feedback_queue(settings), reason="not_msgpack")
        == unreadable + 1
    )
