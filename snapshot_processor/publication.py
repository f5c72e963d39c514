"""Turns a snapshot (with its detections, once there are any) into the image event to publish."""

from __future__ import annotations

from pylib.chain.settle import DONE_KIND, Publication, publish_envelope
from pylib.envelope import Envelope
from snapshot_processor.event import image_event, image_routing_key, pack
from snapshot_processor.messages import SnapshotMessage


class EventBuilder:
    """Relay handler: snapshot in, publish request out; done marks pass through."""

    def __init__(self, exchange: str, topic: str, device_name: str) -> None:
        self.exchange = exchange
        self.routing_key = image_routing_key(topic, device_name)

    def __call__(self, envelope: Envelope) -> Envelope:
        if envelope.kind == DONE_KIND:
            return envelope
        snap = SnapshotMessage.read(envelope)
        event = image_event(
            event_id=snap.event_id,
            device_key=snap.camera_key,
            device_label=snap.device_label,
            image=snap.image,
            image_time=snap.taken,
            storage_path=snap.storage_path,
            storage_url=snap.storage_url,
            source=snap.source,
            detections=snap.detections,
            extra=snap.detection_fields(),
        )
        publication = Publication(
            self.exchange,
            self.routing_key,
            pack(event),
            {"message_id": snap.event_id, "content_type": "application/msgpack"},
        )
        return publish_envelope(publication, snap.settlement, envelope.id)
