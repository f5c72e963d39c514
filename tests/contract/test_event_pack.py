"""The image event is packed as consumers read it, with its image's place in the body
named, so the outbox can keep the image in its snapshot file instead of a second copy."""

from __future__ import annotations

import os

import msgpack
import pytest

from pylib.chain.attachment import Attachment
from snapshot_processor.contract.event import image_event, pack, pack_image_event
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.contract.publication import EventBuilder


@pytest.mark.parametrize("size", [1, 255, 256, 65_535, 65_536, 166_000])
def test_the_body_is_the_plain_pack_and_the_offset_points_at_the_image(size: int) -> None:
    image = os.urandom(size)
    event = image_event(
        event_id="e1",
        device_key="Front camera",
        device_label="Front",
        image=image,
        image_time=1_700_000_000.0,
        storage_path="/data/front.jpg",
        source="fetch",
        detections=[{"label": "Person", "person": True}],
    )

    body, at = pack_image_event(event)

    assert body == pack(event)  # byte for byte what consumers always got
    assert body[at : at + size] == image


def test_the_event_builder_names_the_snapshot_file_as_the_image() -> None:
    image = os.urandom(4096)
    snap = SnapshotMessage(
        event_id="f" * 32,
        camera_key="Garage camera",
        device_label="Garage",
        image=image,
        taken=1_700_000_000.0,
        storage_path="/data/snapshots/garage/x.jpg",
        source="fetch",
    )

    request = EventBuilder("home", "snapshot", "garage")(snap.envelope())

    attachment = Attachment.of(request.body["attachment"])
    assert attachment is not None
    assert attachment.path == "/data/snapshots/garage/x.jpg"
    assert attachment.size == len(image)
    body = request.body["body"]
    assert body[attachment.offset : attachment.offset + attachment.size] == image
    assert msgpack.unpackb(body)["inputs"][0]["image"] == image
