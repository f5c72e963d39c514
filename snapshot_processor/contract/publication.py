"""Turns a snapshot (with its detections) into the image event to publish, and logs it: the one
INFO line of each event is here, where its content is known."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from pylib.chain.attachment import Attachment
from pylib.chain.envelope import Envelope
from pylib.chain.settle import DONE_KIND, Publication, publish_envelope
from pylib.observe.logs import printable
from snapshot_processor.contract.event import (
    bundle_event,
    bundle_routing_key,
    image_event,
    image_routing_key,
    pack,
    pack_image_event,
)
from snapshot_processor.contract.messages import (
    BUNDLE_EVENT_KIND,
    BundleEventMessage,
    SnapshotMessage,
)
from snapshot_processor.ops.recent import EventRecord, RecentEvents

log = logging.getLogger(__name__)


def detection_summary(snap: SnapshotMessage) -> str:
    """What detection made of the image, in a few words: ``person x2, car``."""
    if snap.detection_skipped:
        return f"detection skipped ({snap.detection_skipped})"
    if snap.detection_error:
        return f"detection failed ({snap.detection_error})"
    if not snap.analysed:
        return "no detection"
    labels = Counter(_label(item) for item in snap.detections)
    if not labels:
        return "nothing detected"
    return ", ".join(
        label if count == 1 else f"{label} x{count}" for label, count in labels.most_common()
    )


def _label(detection: dict[str, Any]) -> str:
    label = detection.get("label")
    return label if isinstance(label, str) and label else "unlabelled"


class EventBuilder:
    """Relay handler: snapshot or bundle in, publish request out; done marks pass through."""

    def __init__(
        self,
        exchange: str,
        topic: str,
        device_name: str,
        *,
        recent: RecentEvents | None = None,
        observers: Sequence[Callable[[SnapshotMessage], None]] = (),
    ) -> None:
        self.exchange = exchange
        self.routing_key = image_routing_key(topic, device_name)
        self.bundle_key = bundle_routing_key(topic, device_name)
        self.recent = recent
        # Told of each event on this thread; they must only hand over (MQTT's output).
        self.observers = tuple(observers)

    def __call__(self, envelope: Envelope) -> Envelope:
        if envelope.kind == DONE_KIND:
            return envelope
        if envelope.kind == BUNDLE_EVENT_KIND:
            return self._bundle(BundleEventMessage.read(envelope), envelope.id)
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
            extra=snap.added_fields(),
        )
        body, at = pack_image_event(event)
        publication = Publication(
            self.exchange,
            self.routing_key,
            body,
            {"message_id": snap.event_id, "content_type": "application/msgpack"},
            # The image is the file at storage_path, synced before it came here: the
            # outbox names the file instead of storing the image a second time.
            Attachment(snap.storage_path, at, len(snap.image)),
        )
        # From the trigger's arrival; an upload has none, so from the file's arrival.
        since, what = (
            (snap.triggered, "trigger") if snap.triggered is not None else (snap.taken, "upload")
        )
        log.info(
            "event %s: camera %s, %s, %d bytes, %s, %d ms after the %s",
            snap.event_id,
            printable(snap.camera_key),
            printable(snap.source),
            len(snap.image),
            printable(detection_summary(snap)),
            max(0, round((time.time() - since) * 1000)),
            what,
        )
        if self.recent is not None:
            self.recent.add(EventRecord.of(snap))
        for observe in self.observers:
            try:
                observe(snap)
            except Exception as exc:  # beside the event, never in its way
                log.warning("event %s: an observer failed: %s", snap.event_id, exc)
        return publish_envelope(publication, snap.settlement, envelope.id)

    def _bundle(self, message: BundleEventMessage, msg_id: str) -> Envelope:
        publication = Publication(
            self.exchange,
            self.bundle_key,
            pack(bundle_event(message.manifest)),
            {"message_id": message.bundle_id, "content_type": "application/msgpack"},
        )
        return publish_envelope(publication, message.settlement, msg_id)
