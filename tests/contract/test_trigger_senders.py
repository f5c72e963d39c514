"""Triggers as the real senders make them, and triggers refused inside the chain, over the
real broker: each delivery is settled (acked, nothing left unacked) and the next one flows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest

from pylib.chain.envelope import Envelope
from pylib.chain.settle import PartCounter, Settlement, ack_token
from snapshot_processor.app import App
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.camera.stage import SnapshotStage
from snapshot_processor.config import Device, Settings
from snapshot_processor.contract.messages import BUNDLE_CAMERA_KIND, TRIGGER_KIND, TriggerMessage
from snapshot_processor.contract.settings import BrokerSettings
from snapshot_processor.contract.trigger import parse_trigger
from tests.support.broker import BROKER, Peer, delete_queue, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, foscam_env, make_settings
from tests.support.metrics import sample
from tests.support.wait import wait_until
from tests.support.wire import wire
from tools.camera_simulator import CameraSimulator

CAMERAS = {"front door camera": "Front Door camera"}
JPEG_TAIL = b"\xff\xd9"


def java_device(key: str, kind: str, *, image: bytes | None = None) -> dict[str, Any]:
    """A device as the Java event processor serialises it: every field, nulls included,
    snake_case and camelCase copies side by side."""
    return {
        "device_id": None,
        "device_key": key,
        "deviceKey": key,
        "device_type": kind,
        "deviceType": kind,
        "device_label": key.rsplit(" ", 1)[0],
        "deviceLabel": key.rsplit(" ", 1)[0],
        "location": None,
        "group_name": None,
        "is_input": image is not None,
        "timestamp": 1_700_000_000,
        "uptime": None,
        "sample_value": None,
        "event_detail": None,
        "image": image,
        "image_timestamp": "1700000000" if image is not None else None,
        "imageTimestamp": "1700000000" if image is not None else None,
        "storage_url": None,
        "storage_path": None,
        "device_params": None,
        "trigger_topic": None,
        "trigger_interval": None,
        "triggerInterval": None,
        "device_enabled": True,
        "deviceEnabled": True,
    }


def java_trigger(device_params: str | None, image_bytes: int = 200_000) -> dict[str, Any]:
    """A camera input linked to a camera output, as the Java event processor sends it."""
    output = java_device("Front Door camera", "camera")
    output.update(device_params=device_params, trigger_topic="snapshot", trigger_interval=10)
    output["triggerInterval"] = 10
    image = b"\xff\xd8" + bytes(range(256)) * (image_bytes // 256) + JPEG_TAIL
    return {
        "timestamp": 1_700_000_000,
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "active_input": java_device("Porch camera", "camera", image=image),
        "output_triggered": output,
    }


def packed(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def test_java_camera_input_trigger_of_200_kb_is_accepted() -> None:
    body = packed(java_trigger("admin:pw@10.0.0.5:88"))
    assert 200_000 < len(body) < 210_000
    trigger = parse_trigger(body, CAMERAS, BrokerSettings.model_fields["trigger_max_bytes"].default)
    assert trigger.camera_key == "Front Door camera"
    assert trigger.device_label == "Front Door"
    assert trigger.timestamp == 1_700_000_000
    assert trigger.device_params == "admin:pw@10.0.0.5:88"


def test_default_limit_accepts_a_300_kb_trigger() -> None:
    body = packed(java_trigger(None, image_bytes=300_000))
    assert len(body) > 300_000
    assert parse_trigger(body, CAMERAS).camera_key == "Front Door camera"
    assert BrokerSettings.model_fields["trigger_max_bytes"].default >= len(body)


ISO_TIMESTAMPS = {
    "2023-11-14T22:13:20Z": 1_700_000_000,
    "2023-11-14T22:13:20.999Z": 1_700_000_000,
    "2023-11-14T22:13:20.123456+00:00": 1_700_000_000,
    "2023-11-15T00:13:20+02:00": 1_700_000_000,
    "2023-11-14T17:13:20.5-05:00": 1_700_000_000,
    "2023-11-14T22:13:20": 1_700_000_000,  # no offset: UTC
    "2023-11-14 22:13:20.000001": 1_700_000_000,
    "2023-11-14T22:13:20.123456789Z": 1_700_000_000,  # nanoseconds, as Java writes them
}


@pytest.mark.parametrize("text", sorted(ISO_TIMESTAMPS))
def test_iso_timestamp_is_accepted(text: str) -> None:
    body = trigger_body("Front Door camera")
    body["timestamp"] = text
    assert parse_trigger(packed(body), CAMERAS).timestamp == ISO_TIMESTAMPS[text]


@pytest.mark.parametrize("value", [1_700_000_000, 1_700_000_000.75])
def test_unix_seconds_still_accepted(value: float) -> None:
    body = trigger_body("Front Door camera")
    body["timestamp"] = value
    assert parse_trigger(packed(body), CAMERAS).timestamp == 1_700_000_000


def without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    """``body`` less the named fields (``output_triggered.x`` for a field of the output)."""
    for name in names:
        where, _, field = name.rpartition(".")
        del (body[where] if where else body)[field]
    return body


@pytest.mark.parametrize("missing", ["active_input", "output_triggered.device_type"])
def test_optional_field_may_be_left_out(missing: str) -> None:
    body = without(trigger_body("Front Door camera"), missing)
    trigger = parse_trigger(packed(body), CAMERAS)
    assert (trigger.camera_key, trigger.device_label) == ("Front Door camera", "Front Door")


def test_only_what_the_original_read_is_needed() -> None:
    body = {
        "timestamp": "2023-11-14T22:13:20Z",
        "output_triggered": {"device_key": "FRONT door camera"},
    }
    trigger = parse_trigger(packed(body), CAMERAS)
    assert (trigger.camera_key, trigger.device_label) == ("Front Door camera", "Front Door camera")
    assert (trigger.device_params, trigger.trigger_topic) == (None, None)


def test_non_string_map_keys_are_tolerated() -> None:
    body: dict[Any, Any] = trigger_body("Front Door camera")
    body["active_input"] = {1: 2, None: "x", 2.5: [1], b"raw": {3: 4}}
    body["output_triggered"][7] = "seven"
    body[True] = False
    trigger = parse_trigger(packed(body), CAMERAS)
    # What goes down the chain is plain string-keyed data the chain's decoder accepts.
    envelope = trigger.message().envelope()
    assert type(envelope).unpack(envelope.pack()).body["camera_key"] == "Front Door camera"


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def queued(queue: str) -> int:
    """Messages ready in ``queue``: after the daemon's connection closed, its unacked ones too."""
    connection = pika.BlockingConnection(BROKER)
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
        return count
    finally:
        connection.close()


@contextmanager
def app_then_queue(settings: Settings, left: list[int]) -> Iterator[App]:
    """The daemon's chain; once it stopped, how many messages its queue holds goes in ``left``.

    A delivery the daemon never settled goes back to the queue when its connection closes,
    so an empty queue after the stop means every delivery was acked.
    """
    app = App(settings)
    daemon = app.build()
    daemon.start()
    try:
        listener = next(w for w in app.workers if w.name == "listener")
        assert listener.consuming.wait(15)  # type: ignore[attr-defined]
        yield app
    finally:
        stopped = daemon.stop()
        try:
            left.append(queued(settings.queue_name))
        finally:
            delete_queue(settings.queue_name)
        assert stopped, "the daemon did not stop within its bound"


def in_flight(app: App) -> int:
    listener = next(w for w in app.workers if w.name == "listener")
    return int(listener.in_flight)  # type: ignore[attr-defined]


@pytest.mark.broker
def test_refused_trigger_of_three_parts_is_acked_and_next_flows(
    tmp_path: Path, camera: CameraSimulator
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path, exchange, **foscam_env(), SNAPSHOTS_PER_TRIGGER="3", SNAPSHOT_INTERVAL="0"
    )
    peer = Peer(exchange)
    left: list[int] = []
    try:
        with app_then_queue(settings, left) as app:
            # No camera address configured nor sent: refused once in the chain, per part.
            peer.send_trigger(trigger_body("Front Door camera", device_params=None))
            assert wait_until(lambda: in_flight(app) == 0, 10)
            peer.send_trigger(
                trigger_body(
                    "Front Door camera", device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
                )
            )
            images = peer.wait_for_images(3)
            assert wait_until(lambda: in_flight(app) == 0, 10)
    finally:
        peer.close()
    assert len(images) == 3
    assert left == [0]


@pytest.mark.broker
def test_real_senders_triggers_each_yield_an_event(tmp_path: Path, camera: CameraSimulator) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())  # TRIGGER_MAX_BYTES: default
    params = f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
    iso = trigger_body("Front Door camera", device_params=params)
    iso["timestamp"] = "2023-11-14T22:13:20.123+01:00"
    odd_keys: dict[Any, Any] = trigger_body("Front Door camera", device_params=params)
    odd_keys["active_input"] = {1: 2}
    odd_keys["output_triggered"][3] = None
    senders = [
        java_trigger(params),
        iso,
        without(trigger_body("Front Door camera", device_params=params), "active_input"),
        without(
            trigger_body("Front Door camera", device_params=params), "output_triggered.device_type"
        ),
        odd_keys,
    ]
    peer = Peer(exchange)
    left: list[int] = []
    crashes = sample("thread_crashes_total", thread="listener")
    try:
        with app_then_queue(settings, left) as app:
            peer.send_raw(b"\x81\x81\x01\x02\x03")  # {{1: 2}: 3}: refused, acked
            # A number too large for the chain's messages: refused, acked, listener alive.
            far = trigger_body("Front Door camera", device_params=params)
            peer.send_trigger({**far, "timestamp": 1e300})
            for body in senders:
                peer.send_trigger(body)
            images = peer.wait_for_images(len(senders))
            assert wait_until(lambda: in_flight(app) == 0, 10)
    finally:
        peer.close()
    assert len(images) == len(senders)
    assert {image["inputs"][0]["device_key"] for image in images} == {"Front Door camera"}
    assert left == [0]
    assert sample("thread_crashes_total", thread="listener") == crashes


def test_every_part_of_every_trigger_is_settled(tmp_path: Path, camera: CameraSimulator) -> None:
    """The snapshot stage, per_trigger 3, between real inproc sockets; the owner's side
    (a PartCounter, as the listener keeps) counts what comes out. A trigger refused before
    it is split (no camera key), one whose every part fails (no address) and a good one
    each end settled: one done mark of one part, three of three, three snapshots of three.
    """
    devices = [
        Device.model_validate({"LOCATION": "Front Door", "TYPE": "camera", "VENDOR": "foscam"}),
    ]
    owner: PartCounter[int] = PartCounter()

    def owed(tag: int) -> Settlement:
        owner.add(tag)
        return Settlement(ack_token("inproc://acks", tag=tag))

    no_key = Envelope(TRIGGER_KIND, {"device_label": "x", "timestamp": 0, **owed(1).fields()})
    no_address = TriggerMessage("Front Door camera", "Front Door", 0, None, None, owed(2))
    good = TriggerMessage(
        "Front Door camera",
        "Front Door",
        0,
        f"admin:{PASSWORD}@127.0.0.1:{camera.port}",
        None,
        owed(3),
    )
    with wire("snapshot", aside={BUNDLE_CAMERA_KIND}) as ends:
        stage = SnapshotStage(
            "snapshot-parts",
            threading.Event(),
            cameras=CameraRegistry(devices, timeout=2, retries=0),
            root=tmp_path,
            inbox=ends.inbox,
            outbox=ends.outbox,
            per_trigger=3,
            interval=0,
        )
        stage.start()
        try:
            assert stage.ready.wait(5)
            with ends.sender() as sender:
                for envelope in (no_key, no_address.envelope(), good.envelope()):
                    assert sender.send(envelope, block=False)
                received = ends.receive(7)
                assert ends.receive(1, timeout=0.3) == []  # nothing more comes
                # The two triggers split into parts each start and end a burst in a bundle.
                assert len(ends.set_aside) == 4
        finally:
            assert stage.stop_and_join(10)
    settled = []
    for envelope in received:
        settlement = Settlement.of(envelope.body)
        assert settlement.ack is not None
        if owner.done(settlement.ack["tag"], settlement.parts):
            settled.append(settlement.ack["tag"])
    assert sorted(settled) == [1, 2, 3]
    assert len(owner) == 0
