"""The messages between the daemon's stages: every kind and body field, defined once.

Reading a body checks every field: a wrong shape is a :class:`MessageError`, never a ``KeyError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

from pylib.chain.envelope import Envelope
from pylib.chain.settle import Settlement

TRIGGER_KIND = "trigger"
SNAPSHOT_KIND = "snapshot"
BUNDLE_CAMERA_KIND = "bundle.camera"
BUNDLE_EVENT_KIND = "bundle.event"


class MessageError(ValueError):
    """A message body that lacks a field or has one of the wrong type."""


def _read(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MessageError(f"field {name!r} is {type(value).__name__}, not {kind}")
    return value


@dataclass(frozen=True)
class TriggerMessage:
    """A validated trigger on its way to the snapshot stage."""

    camera_key: str
    device_label: str
    timestamp: int
    device_params: str | None = None
    trigger_topic: str | None = None
    settlement: Settlement = field(default_factory=lambda: Settlement(None))
    # When the daemon received it (unix seconds), for the event's log line.
    received: float | None = None
    # The first snapshot's event id, chosen by whoever asked (the HTTP API returns it).
    event_id: str | None = None
    sensor_key: str | None = None
    traceparent: str | None = None
    # The sensor event's bundle, set by the snapshot stage: its id, its folder (``group``)
    # and when its first trigger came (unix seconds).
    bundle_id: str | None = None
    bundle_group: str | None = None
    bundle_opened: float | None = None

    def envelope(self, msg_id: str | None = None) -> Envelope:
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settlement"}
        body |= self.settlement.fields()
        return (
            Envelope(TRIGGER_KIND, body) if msg_id is None else Envelope(TRIGGER_KIND, body, msg_id)
        )

    @classmethod
    def read(cls, envelope: Envelope) -> Self:
        """The trigger in an envelope; :class:`MessageError` if it is not one."""
        if envelope.kind != TRIGGER_KIND:
            raise MessageError(f"a {envelope.kind!r} message where a trigger belongs")
        body = envelope.body
        return cls(
            camera_key=_read(body, "camera_key", str, optional=False),
            device_label=_read(body, "device_label", str, optional=False),
            timestamp=_read(body, "timestamp", int, optional=False),
            device_params=_read(body, "device_params", str, optional=True),
            trigger_topic=_read(body, "trigger_topic", str, optional=True),
            settlement=Settlement.of(body),
            received=_read(body, "received", (int, float), optional=True),
            event_id=_read(body, "event_id", str, optional=True),
            sensor_key=_read(body, "sensor_key", str, optional=True),
            traceparent=_read(body, "traceparent", str, optional=True),
            bundle_id=_read(body, "bundle_id", str, optional=True),
            bundle_group=_read(body, "bundle_group", str, optional=True),
            bundle_opened=_read(body, "bundle_opened", (int, float), optional=True),
        )


@dataclass(frozen=True)
class SnapshotMessage:
    """One image on its way to becoming an event, and what the stages found out about it."""

    event_id: str
    camera_key: str
    device_label: str
    image: bytes
    taken: float
    storage_path: str
    source: str
    settlement: Settlement = field(default_factory=lambda: Settlement(None))
    detections: list[dict[str, Any]] = field(default_factory=list)
    analysed: bool = False
    detection_error: str | None = None
    detection_skipped: str | None = None
    annotated_path: str | None = None
    storage_url: str | None = None
    # When the daemon received the trigger it answers (None: an upload, no trigger).
    triggered: float | None = None
    # A warm RTSP stream's stills from the seconds before the trigger, oldest first.
    pre_trigger_paths: list[str] = field(default_factory=list)
    # The sensor event's bundle and this image's number in its camera's burst (1 first).
    bundle_id: str | None = None
    frame: int | None = None
    # The bundle's folder, ``YYYY/MM/DD/<name>`` (not on the wire).
    bundle_group: str | None = None
    # Which backend's answer stands; in a chain, why (``sure``, ``clear``, ``unsure``,
    # ``budget spent``, ``cloud failed: <reason>``) and the local model's person confidence.
    decided_by: str | None = None
    cascade: str | None = None
    local_person_confidence: float | None = None

    #: The detection fields an event carries as added fields of its input entry.
    DETECTION_FIELDS = ("analysed", "detection_error", "detection_skipped", "annotated_path")
    #: Added where a backend decided, and in a chain.
    DECISION_FIELDS = ("decided_by", "cascade", "local_person_confidence")

    def envelope(self) -> Envelope:
        """As an envelope for the chain; its id is the event id."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settlement"}
        return Envelope(SNAPSHOT_KIND, {**body, **self.settlement.fields()}, self.event_id)

    @classmethod
    def read(cls, envelope: Envelope) -> Self:
        """The snapshot in an envelope; :class:`MessageError` if it is not one."""
        if envelope.kind != SNAPSHOT_KIND:
            raise MessageError(f"a {envelope.kind!r} message where a snapshot belongs")
        body = envelope.body
        detections = _read(body, "detections", list, optional=True) or []
        if not all(isinstance(item, dict) for item in detections):
            raise MessageError("field 'detections' holds something other than maps")
        pre_trigger = _read(body, "pre_trigger_paths", list, optional=True) or []
        if not all(isinstance(item, str) for item in pre_trigger):
            raise MessageError("field 'pre_trigger_paths' holds something other than paths")
        image = _read(body, "image", bytes, optional=False)
        if not image:
            raise MessageError("field 'image' is empty")
        return cls(
            event_id=_read(body, "event_id", str, optional=False),
            camera_key=_read(body, "camera_key", str, optional=False),
            device_label=_read(body, "device_label", str, optional=False),
            image=image,
            taken=float(_read(body, "taken", (int, float), optional=False)),
            storage_path=_read(body, "storage_path", str, optional=False),
            source=_read(body, "source", str, optional=False),
            settlement=Settlement.of(body),
            detections=detections,
            analysed=bool(body.get("analysed")),
            detection_error=_read(body, "detection_error", str, optional=True),
            detection_skipped=_read(body, "detection_skipped", str, optional=True),
            annotated_path=_read(body, "annotated_path", str, optional=True),
            storage_url=_read(body, "storage_url", str, optional=True),
            triggered=_read(body, "triggered", (int, float), optional=True),
            pre_trigger_paths=pre_trigger,
            bundle_id=_read(body, "bundle_id", str, optional=True),
            frame=_read(body, "frame", int, optional=True),
            bundle_group=_read(body, "bundle_group", str, optional=True),
            decided_by=_read(body, "decided_by", str, optional=True),
            cascade=_read(body, "cascade", str, optional=True),
            local_person_confidence=_read(
                body, "local_person_confidence", (int, float), optional=True
            ),
        )

    def with_detection(
        self,
        *,
        detections: list[dict[str, Any]] | None = None,
        analysed: bool = False,
        error: str | None = None,
        skipped: str | None = None,
        annotated_path: str | None = None,
        decided_by: str | None = None,
        cascade: str | None = None,
        local_person_confidence: float | None = None,
    ) -> Self:
        return replace(
            self,
            detections=detections or [],
            analysed=analysed,
            detection_error=error,
            detection_skipped=skipped,
            annotated_path=annotated_path,
            decided_by=decided_by,
            cascade=cascade,
            local_person_confidence=local_person_confidence,
        )

    def with_storage_url(self, url: str) -> Self:
        """This snapshot with the link a person opens for its off-site copy."""
        return replace(self, storage_url=url)

    def added_fields(self) -> dict[str, Any]:
        """The fields the event's input entry carries beyond the original's: the detection
        fields where detection ran, the pre-trigger stills where there are any, the bundle
        and frame of a triggered snapshot."""
        added: dict[str, Any] = {}
        if self.analysed or self.detection_error or self.detection_skipped:
            added.update((name, getattr(self, name)) for name in self.DETECTION_FIELDS)
        added.update(
            (name, getattr(self, name))
            for name in self.DECISION_FIELDS
            if getattr(self, name) is not None
        )
        if self.pre_trigger_paths:
            added["pre_trigger_paths"] = self.pre_trigger_paths
        if self.bundle_id is not None:
            added.update(bundle_id=self.bundle_id, frame=self.frame)
        return added


@dataclass(frozen=True)
class BundleCameraMessage:
    """A camera's burst in a bundle: sent when it starts (``ended`` false, ``expected``
    frames) and when it ends (the event ids it ``took``, ``failure`` if it fell short, and
    how many frames were ``unasked`` because a newer trigger covered them)."""

    bundle_id: str
    group: str
    opened: float
    sensor: str | None
    camera_key: str
    device_label: str
    expected: int
    ended: bool = False
    took: list[str] = field(default_factory=list)
    failure: str | None = None
    unasked: int = 0

    def envelope(self) -> Envelope:
        return Envelope(BUNDLE_CAMERA_KIND, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def read(cls, envelope: Envelope) -> Self:
        """The message in an envelope; :class:`MessageError` if it is not one."""
        if envelope.kind != BUNDLE_CAMERA_KIND:
            raise MessageError(f"a {envelope.kind!r} message where a bundle camera belongs")
        body = envelope.body
        took = _read(body, "took", list, optional=True) or []
        if not all(isinstance(item, str) for item in took):
            raise MessageError("field 'took' holds something other than event ids")
        return cls(
            bundle_id=_read(body, "bundle_id", str, optional=False),
            group=_read(body, "group", str, optional=False),
            opened=float(_read(body, "opened", (int, float), optional=False)),
            sensor=_read(body, "sensor", str, optional=True),
            camera_key=_read(body, "camera_key", str, optional=False),
            device_label=_read(body, "device_label", str, optional=False),
            expected=_read(body, "expected", int, optional=False),
            ended=bool(body.get("ended")),
            took=took,
            failure=_read(body, "failure", str, optional=True),
            unasked=_read(body, "unasked", int, optional=True) or 0,
        )


@dataclass(frozen=True)
class BundleEventMessage:
    """A complete bundle's manifest on its way to be published as the bundle event."""

    bundle_id: str
    manifest: dict[str, Any]
    settlement: Settlement = field(default_factory=lambda: Settlement(None))

    def envelope(self) -> Envelope:
        body = {"bundle_id": self.bundle_id, "manifest": self.manifest}
        return Envelope(BUNDLE_EVENT_KIND, {**body, **self.settlement.fields()}, self.bundle_id)

    @classmethod
    def read(cls, envelope: Envelope) -> Self:
        """The message in an envelope; :class:`MessageError` if it is not one."""
        if envelope.kind != BUNDLE_EVENT_KIND:
            raise MessageError(f"a {envelope.kind!r} message where a bundle event belongs")
        return cls(
            bundle_id=_read(envelope.body, "bundle_id", str, optional=False),
            manifest=_read(envelope.body, "manifest", dict, optional=False),
            settlement=Settlement.of(envelope.body),
        )
