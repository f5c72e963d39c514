"""Trigger in, image event out, over the real RabbitMQ and a real camera simulator."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pylib.amqp.consumer import AmqpListener
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, foscam_env, make_settings
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def test_trigger_yields_documented_event(
    tmp_path: Path, camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    peer = Peer(exchange)
    try:
        with running_app(settings):
            before = time.time()
            peer.send_trigger(
                trigger_body(
                    "Front Door camera",
                    device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port},554",
                )
            )
            images = peer.wait_for_images(1)
            peer.pump(1.2)  # heartbeats arrive every 0.5 s
    finally:
        peer.close()
    assert len(images) == 1
    routing_keys = {key for key, _, _ in peer.messages}
    assert "event.notify.snapshot.garage.image" in routing_keys
    assert "event.heartbeat.snapshot" in routing_keys
    event = images[0]
    assert set(event) >= {"timestamp", "inputs"}
    assert isinstance(event["timestamp"], str)
    assert event["timestamp"].endswith("Z")
    (entry,) = event["inputs"]
    assert entry["device_key"] == "Front Door camera"
    assert entry["device_label"] == "Front Door"
    assert entry["type"] == "camera"
    assert isinstance(entry["image"], bytes)
    Image.open(io.BytesIO(entry["image"])).load()  # a whole JPEG
    assert int(entry["image_timestamp"]) >= int(before)
    assert isinstance(entry["image_timestamp"], str)
    assert entry["storage_url"] is None
    assert Path(entry["storage_path"]).read_bytes() == entry["image"]
    assert Path(entry["storage_path"]).is_relative_to(tmp_path)
    assert "event_detail" not in entry  # no detection, no person
    assert entry["source"] == "fetch"
    assert entry["detections"] == []
    assert len(entry["event_id"]) == 32
    image_props = next(props for key, props, _ in peer.messages if key.endswith(".image"))
    assert image_props.delivery_mode == 2
    assert image_props.message_id == entry["event_id"]
    heartbeats = [body for key, _, body in peer.messages if key.startswith("event.heartbeat")]
    # The original fields, and an added one: the camera's health as the prober sees it.
    [output] = heartbeats[-1]["outputs"]
    health = output.pop("health")
    assert output == {"type": "camera", "location": "Front Door", "device_key": "Front Door camera"}
    assert heartbeats[-1]["inputs"] == []
    # The trigger's snapshot showed the camera is up (its address came with the trigger).
    assert health["state"] == "up"
    assert health["last_seen"].endswith("Z")
    # One INFO line per event, timed from the trigger's arrival.
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(f"event {entry['event_id']}")
    ]
    assert re.search(
        r"camera Front Door camera, fetch, \d+ bytes, no detection, \d+ ms after the trigger$", line
    ), line
    assert PASSWORD not in caplog.text
    assert "w0rd" not in caplog.text


def test_two_triggers_in_one_second_both_publish(tmp_path: Path, camera: CameraSimulator) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        **foscam_env(),
        OUTPUT_1_ADDRESS=f"127.0.0.1:{camera.port}",
        OUTPUT_1_USER="admin",
        OUTPUT_1_PASSWORD=PASSWORD,
        SNAPSHOTS_PER_TRIGGER="2",
        SNAPSHOT_INTERVAL="0",
    )
    peer = Peer(exchange)
    try:
        with running_app(settings):
            now = int(time.time())
            body = trigger_body("front door CAMERA", timestamp=now, device_params=None)
            peer.send_trigger(body)
            peer.send_trigger(body)
            images = peer.wait_for_images(4)
    finally:
        peer.close()
    assert len(images) == 4
    ids = {image["inputs"][0]["event_id"] for image in images}
    paths = {image["inputs"][0]["storage_path"] for image in images}
    assert len(ids) == 4
    assert len(paths) == 4
    assert all(Path(path).exists() for path in paths)


def test_camera_failure_acks_and_next_trigger_flows(
    tmp_path: Path, camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            camera.mode = "garbage"
            peer.send_trigger(
                trigger_body(
                    "Front Door camera", device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
                )
            )
            peer.send_trigger(
                trigger_body(
                    "Front Door camera", device_params=f"admin:wrong@127.0.0.1:{camera.port}"
                )
            )
            peer.pump(1.0)
            camera.mode = "ok"
            peer.send_trigger(
                trigger_body(
                    "Front Door camera", device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
                )
            )
            images = peer.wait_for_images(1)
            listener = next(w for w in app.workers if isinstance(w, AmqpListener))
            assert wait_until(lambda: listener.in_flight == 0, 5, step=0.05), (
                f"{listener.in_flight} trigger(s) still in flight"
            )
    finally:
        peer.close()
    assert len(images) == 1
    assert "Front Door camera" in caplog.text
    assert PASSWORD not in caplog.text


def test_thirty_two_cameras_fetch_concurrently(tmp_path: Path, camera: CameraSimulator) -> None:
    latency = 1.0
    camera.latency = latency
    env: dict[str, str] = {}
    for n in range(1, 33):
        env |= foscam_env(n, location=f"cam{n}")
        env |= {
            f"OUTPUT_{n}_ADDRESS": f"127.0.0.1:{camera.port}",
            f"OUTPUT_{n}_USER": "admin",
            f"OUTPUT_{n}_PASSWORD": PASSWORD,
        }
    exchange = unique_exchange()
    # A generous timeout: this checks concurrency, not how fast a loaded machine answers.
    settings = make_settings(tmp_path, exchange, RABBITMQ_PREFETCH="64", CAMERA_TIMEOUT="10", **env)
    peer = Peer(exchange)
    try:
        with running_app(settings):
            started = time.monotonic()
            for n in range(1, 33):
                peer.send_trigger(trigger_body(f"cam{n} camera", device_params=None))
            images = peer.wait_for_images(32, timeout=60)
            elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert sorted(image["inputs"][0]["device_key"] for image in images) == sorted(
        f"cam{n} camera" for n in range(1, 33)
    )
    print(f"\n32 cameras answering after {latency:.1f} s each: all 32 events in {elapsed:.2f} s")
    # One after another would take 32 s; at once, about one camera's latency. The bound is loose
    # on purpose (a busy CI machine); the benchmark reports the real figure.
    assert elapsed < latency * 8, f"32 cameras took {elapsed:.1f} s"


def test_health_reports_broker_and_threads(tmp_path: Path) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    with running_app(settings) as app:
        healthy, detail = app.health()
        assert healthy, detail
    healthy, detail = app.health()  # stopped: the connections are closed
    assert not healthy
    assert "cannot reach the broker" in detail
