"""Bundle ids in the whole daemon over the real RabbitMQ: the triggers one sensor sends to
its cameras give image events of one bundle, each frame numbered in its camera's burst,
while another sensor's make another bundle; the events keep the original's shape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import camera_env, make_settings
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker

PASSWORD = "bundle pass"
ORIGINAL_FIELDS = {
    "device_key",
    "device_label",
    "type",
    "image",
    "image_timestamp",
    "storage_url",
    "storage_path",
}


def test_one_sensor_event_is_one_bundle_of_numbered_frames(tmp_path: Path) -> None:
    exchange = unique_exchange()
    with (
        CameraSimulator(user="admin", password=PASSWORD) as front,
        CameraSimulator(user="admin", password=PASSWORD) as yard,
    ):
        settings = make_settings(
            tmp_path,
            exchange,
            SNAPSHOTS_PER_TRIGGER="2",
            SNAPSHOT_INTERVAL="0.2",
            **camera_env(front.port, PASSWORD, n=1, location="Front Door"),
            **camera_env(yard.port, PASSWORD, n=2, location="Yard"),
        )
        peer = Peer(exchange)
        try:
            with running_app(settings):
                for camera in ("Front Door camera", "Yard camera"):
                    peer.send_trigger(trigger_body(camera, device_params=None))  # hall pir
                other = trigger_body("Yard camera", device_params=None)
                other["active_input"] = {"device_key": "gate contact", "device_type": "contact"}
                peer.send_trigger(other)
                events = peer.wait_for_images(6)
        finally:
            peer.close()
    entries = [event["inputs"][0] for event in events]
    assert len(entries) == 6
    assert all(set(entry) >= ORIGINAL_FIELDS for entry in entries)
    bundles = Counter(entry["bundle_id"] for entry in entries)
    assert sorted(bundles.values()) == [2, 4]
    [hall] = [bundle for bundle, count in bundles.items() if count == 4]
    frames = sorted((e["device_key"], e["frame"]) for e in entries if e["bundle_id"] == hall)
    assert frames == [
        ("Front Door camera", 1),
        ("Front Door camera", 2),
        ("Yard camera", 1),
        ("Yard camera", 2),
    ]
    assert len({entry["event_id"] for entry in entries}) == 6
