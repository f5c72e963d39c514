"""Home Assistant's view of the daemon, kept on the MQTT broker beside the chain.

Each topic has a desired retained payload (the latest image, the person sensor, the last
event, a camera's state, the daemon's health, the discovery messages); the output sends what
differs from what the broker last took, one message in flight per topic, so a slow broker
sees only the newest of each and nothing piles up. Every (re)connection sends all of it again.
The chain only hands over what it saw (:meth:`MqttOutput.saw`) and never waits.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import MQTTErrorCode
from prometheus_client import Counter

from pylib.chain.envelope import Envelope
from pylib.chain.stage import HandlerResult, Stage
from pylib.observe.logs import printable
from pylib.observe.redact import redact
from snapshot_processor.camera.prober import CameraStatus, iso_time
from snapshot_processor.camera.requests import SnapshotRefusedError, SnapshotRequests
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.contract.publication import detection_summary
from snapshot_processor.mqtt.link import MqttLink, Received
from snapshot_processor.mqtt.topics import NOT_PERSON, OFFLINE, ONLINE, PRESS, MqttCamera, Topics

log = logging.getLogger(__name__)

MQTT_PUBLISHED = Counter(
    "mqtt_messages_published_total", "Messages handed to the MQTT broker", ["kind"]
)
MQTT_SUPERSEDED = Counter(
    "mqtt_messages_superseded_total",
    "States replaced by a newer one before the MQTT broker had taken them",
    ["kind"],
)
MQTT_NOT_SHOWN = Counter(
    "mqtt_events_not_shown_total", "Events Home Assistant was not told of (a bad snapshot)"
)
MQTT_COMMANDS = Counter(
    "mqtt_commands_total", "Home Assistant button presses, by what came of them", ["result"]
)

# Camera states and the daemon's health are read this often, and sent when they change.
POLL_SECONDS = 2.0
# At a stop, how long the broker may take to take our "offline".
GOODBYE_SECONDS = 1.0
# A Home Assistant sensor's state holds at most 255 characters.
STATE_MAX = 255
# In order of sending after a connection: entities first, then their states, then "online".
_RANK = {"discovery": 0, "image": 1, "availability": 3}


@dataclass(frozen=True)
class Sighting:
    """What Home Assistant is told of one event: no file read, so cheap on the chain's thread."""

    camera_key: str
    image: bytes
    annotated_path: str | None
    event: dict[str, Any]
    person: bool

    @classmethod
    def of(cls, snap: SnapshotMessage) -> Sighting:
        people = [item for item in snap.detections if item.get("person")]
        scores = [
            float(item["confidence"])
            for item in people
            if isinstance(item.get("confidence"), int | float)
        ]
        labels = sorted(
            {str(item["label"]) for item in snap.detections if isinstance(item.get("label"), str)}
        )
        event = {
            "event_id": snap.event_id,
            "camera": snap.camera_key,
            "time": datetime.fromtimestamp(snap.taken, UTC).isoformat(timespec="seconds"),
            "detected": detection_summary(snap)[:STATE_MAX],
            "person": bool(people),
            "person_confidence": max(scores) if scores else None,
            "labels": labels,
            "source": snap.source,
            "storage_url": snap.storage_url,
            "bundle_id": snap.bundle_id,
        }
        return cls(snap.camera_key, snap.image, snap.annotated_path, event, bool(people))


class MqttOutput(Stage):
    """The stage beside the chain that keeps Home Assistant's entities up to date."""

    def __init__(
        self,
        stop_event: threading.Event,
        link: MqttLink,
        topics: Topics,
        cameras: list[MqttCamera],
        discovery: Mapping[str, bytes],
        *,
        person_hold: float,
        requests: SnapshotRequests | None,
        health: Callable[[], tuple[bool, list[str], list[str]]],
        camera_status: Callable[[], Mapping[str, CameraStatus]],
        record: Path,
        verdicts: Callable[[str, str, str], str] | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__("mqtt", stop_event, on_fatal=on_fatal)
        self.link = link
        self.topics = topics
        self.cameras = {camera.key: camera for camera in cameras}
        self.by_slug = {camera.slug: camera for camera in cameras}
        self.discovery = dict(discovery)
        self.person_hold = person_hold
        self.requests = requests
        self.health_of = health
        self.camera_status = camera_status
        link.on_connected = lambda: self.call_soon_threadsafe(self._connected)
        link.on_message = lambda message: self.call_soon_threadsafe(lambda: self._received(message))
        link.on_published = lambda mid: self.call_soon_threadsafe(lambda: self._published(mid))
        # From the chain's thread: the newest sighting of each camera not yet taken.
        self._sightings_lock = threading.Lock()
        self._sightings: dict[str, Sighting] = {}
        self._sightings_due = False
        # The stage's own, on its thread.
        self._desired: dict[str, tuple[bytes, str]] = {}
        self._sent: dict[str, bytes] = {}
        self._inflight: dict[str, int] = {}  # topic -> message id, until the broker acks it
        self._by_mid: dict[int, str] = {}
        self._waiting: set[str] = set()
        self._person_until: dict[str, float] = {}
        self.record = record
        self.verdicts = verdicts
        self._latest_event: dict[str, str] = {}  # camera key -> its newest event's id
        self._cleared = False
        self._removals: set[int] = set()  # message ids of removals the broker has not acked
        self._session = 0  # the link's connection we last sent everything on
        # An event's sensor states wait for its image to leave.
        self._after = {
            self.topics.camera(camera, what): self.topics.camera(camera, "image")
            for camera in cameras
            for what in ("person", "event")
        }

    # --- from the chain's thread ----------------------------------------------------
    def saw(self, snap: SnapshotMessage) -> None:
        """An event was made: remember it for Home Assistant. Never waits, never raises."""
        try:
            sighting = Sighting.of(snap)
        except Exception as exc:  # a view for people is never worth an event
            MQTT_NOT_SHOWN.inc()
            log.warning("MQTT: event %s not shown in Home Assistant: %s", snap.event_id, exc)
            return
        with self._sightings_lock:
            earlier = self._sightings.get(sighting.camera_key)
            if earlier is not None and earlier.person and not sighting.person:
                # Coalesced: the sensor must still see the person of the one replaced.
                sighting = Sighting(
                    sighting.camera_key,
                    sighting.image,
                    sighting.annotated_path,
                    sighting.event,
                    person=True,
                )
            self._sightings[sighting.camera_key] = sighting
            due, self._sightings_due = self._sightings_due, True
        if not due:
            self.call_soon_threadsafe(self._take_sightings)

    # --- the stage -------------------------------------------------------------------
    def handle(self, envelope: Envelope) -> HandlerResult:
        raise ValueError(f"the MQTT output takes no messages; a {envelope.kind!r} came")

    def on_thread_start(self) -> None:
        super().on_thread_start()
        for topic, payload in self.discovery.items():
            self._desired[topic] = (payload, "discovery")
        for camera in self.cameras.values():
            # After a restart of this thread too: its timers are gone, a hold may run on.
            left = self._person_until.get(camera.key, 0.0) - time.monotonic()
            self._desired[self.topics.camera(camera, "person")] = (
                (b"ON", "person") if left > 0 else (b"OFF", "person")
            )
            if left > 0:
                self.call_later(left, functools.partial(self._person_over, camera))
        self._desired[self.topics.availability] = (ONLINE.encode(), "availability")
        self._poll()
        if self.link.connected.is_set():
            self._connected()  # before the thread ran: its own call may come late

    def on_thread_close(self) -> None:
        if self.requests is not None:
            self.requests.close()  # its socket was made on this thread
        super().on_thread_close()

    def finish(self, deadline: float) -> None:
        """Say ``offline`` ourselves: a DISCONNECT makes the broker drop our last will."""
        # Wanted whether or not connected now: a connection made from here on says it too.
        self._set(self.topics.availability, OFFLINE.encode(), "availability")
        if self.link.connected.is_set():
            topic = self.topics.availability
            self.run_until(
                lambda: topic not in self._inflight and topic not in self._waiting,
                min(deadline, time.monotonic() + GOODBYE_SECONDS),
            )
        super().finish(deadline)

    def _connected(self) -> None:
        """Once per connection: subscribe, and send everything again (the broker may have
        lost its retained messages, or be another)."""
        if self.link.connections == self._session:
            return
        self._session = self.link.connections
        if not self.should_keep_running():  # connected while stopping: only "offline"
            self._sent.pop(self.topics.availability, None)
            self._sync(self.topics.availability)
            return
        self.link.subscribe(
            self.topics.commands, self.topics.verdicts, *self.topics.home_assistant_status
        )
        if not self._cleared:
            self._clear_removed()
        self._send_all()

    def _send_all(self) -> None:
        self._sent.clear()
        self._inflight.clear()
        self._by_mid.clear()
        self._waiting.clear()
        for topic in sorted(self._desired, key=lambda t: _RANK.get(self._desired[t][1], 2)):
            self._sync(topic)

    # --- what the broker should hold -------------------------------------------------
    def _set(self, topic: str, payload: bytes, kind: str, *, news: bool = False) -> None:
        """Want ``payload`` retained on ``topic``; ``news`` (a new event's image) goes out
        even when its bytes are the last ones', as Home Assistant notes each update."""
        if topic in self._waiting and (news or self._desired[topic][0] != payload):
            MQTT_SUPERSEDED.labels(kind).inc()
        if news:
            self._sent.pop(topic, None)
        self._desired[topic] = (payload, kind)
        self._sync(topic)

    def _sync(self, topic: str) -> None:
        if not self.link.connected.is_set():
            return  # sent on connection
        payload, kind = self._desired[topic]
        if self._sent.get(topic) == payload:
            self._waiting.discard(topic)
            return
        if topic in self._inflight or self._after.get(topic) in self._waiting:
            # Sent when the broker acks the one before, or once this event's image is
            # on its way: the person sensor never turns on beside the last event's image.
            self._waiting.add(topic)
            return
        info = self.link.publish(topic, payload, retain=True)
        if info is None or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return  # the connection is going: sent again on the next
        self._waiting.discard(topic)
        self._sent[topic] = payload
        self._inflight[topic] = info.mid
        self._by_mid[info.mid] = topic
        MQTT_PUBLISHED.labels(kind).inc()

    def _published(self, mid: int) -> None:
        if mid in self._removals:
            self._removals.discard(mid)
            if not self._removals:
                self._write_record()
            return
        topic = self._by_mid.pop(mid, None)
        if topic is None:
            return  # from before a reconnection
        self._inflight.pop(topic, None)
        if topic in self._waiting:
            self._sync(topic)
        if topic not in self._waiting:
            for after in [t for t in self._waiting if self._after.get(t) == topic]:
                self._sync(after)

    # --- events, people, cameras, health -------------------------------------------
    def _take_sightings(self) -> None:
        with self._sightings_lock:
            sightings, self._sightings = self._sightings, {}
            self._sightings_due = False
        for sighting in sightings.values():
            camera = self.cameras.get(sighting.camera_key)
            if camera is None:  # cannot be, as triggers name configured cameras only
                MQTT_NOT_SHOWN.inc()
                log.warning("MQTT: no entity for camera %s", printable(sighting.camera_key))
                continue
            self._set(self.topics.camera(camera, "image"), _image(sighting), "image", news=True)
            self._latest_event[camera.key] = str(sighting.event["event_id"])
            event = json.dumps(sighting.event, sort_keys=True).encode()
            self._set(self.topics.camera(camera, "event"), event, "event")
            if sighting.person:
                self._person_until[camera.key] = time.monotonic() + self.person_hold
                self._set(self.topics.camera(camera, "person"), b"ON", "person")
                self.call_later(self.person_hold, functools.partial(self._person_over, camera))

    def _person_over(self, camera: MqttCamera) -> None:
        if time.monotonic() >= self._person_until.get(camera.key, 0.0):
            self._set(self.topics.camera(camera, "person"), b"OFF", "person")

    def _poll(self) -> None:
        try:
            statuses = self.camera_status()
            for camera in self.cameras.values():
                status = statuses.get(camera.key)
                if camera.fetched and status is not None:
                    state = _camera_state(status)
                    self._set(self.topics.camera(camera, "state"), state, "state")
            ok, problems, warnings = self.health_of()
            health = {"ok": ok, "problems": problems, "warnings": warnings}
            self._set(self.topics.status, _json(health), "status")
        finally:
            self.call_later(POLL_SECONDS, self._poll)

    # --- what comes from the broker ------------------------------------------------
    def _received(self, message: Received) -> None:
        topic = message.topic
        if topic in self.topics.home_assistant_status:
            # Its birth message, not one a broker kept: that comes at every subscription.
            if message.payload == ONLINE.encode() and not message.retain:
                log.info("MQTT: Home Assistant (re)started; sending every entity again")
                self._send_all()
        elif topic_matches_sub(self.topics.commands, topic):
            self._pressed(topic.split("/")[-2], message)
        elif topic_matches_sub(self.topics.verdicts, topic):
            self._judged(topic.split("/")[-2], message)

    def _judged(self, slug: str, message: Received) -> None:
        """ "Not a person" on a camera's latest event: a verdict for the labelled set."""
        camera = self.by_slug.get(slug)
        event_id = self._latest_event.get(camera.key) if camera else None
        if not message.payload or self.verdicts is None:
            return  # cleared, or detection off: nothing was asked
        if message.retain:
            MQTT_COMMANDS.labels("ignored").inc()
            log.warning(
                "MQTT: a retained verdict on %s ignored and cleared", printable(message.topic)
            )
            self.link.publish(message.topic, b"", retain=True)
            return
        if camera is None or message.payload != NOT_PERSON.encode() or event_id is None:
            MQTT_COMMANDS.labels("ignored").inc()
            log.warning(
                "MQTT: %r on %s is no verdict on an event of ours; ignored",
                printable(message.payload[:40].decode(errors="replace")),
                printable(message.topic),
            )
            return
        try:
            note = self.verdicts(event_id, NOT_PERSON, "home_assistant")
        except (OSError, ValueError, sqlite3.Error) as exc:
            MQTT_COMMANDS.labels("refused").inc()
            log.warning("MQTT: not a person on event %s not kept: %s", event_id, exc)
            return
        MQTT_COMMANDS.labels("verdict").inc()
        log.info("MQTT: not a person on event %s of %s %s", event_id, camera.key, note)

    def _pressed(self, slug: str, message: Received) -> None:
        camera = self.by_slug.get(slug)
        if not message.payload:
            return  # a retained command cleared (by us): nothing was asked
        if message.retain:
            # A command kept by the broker would take a snapshot at every connection.
            MQTT_COMMANDS.labels("ignored").inc()
            log.warning(
                "MQTT: a retained command on %s ignored and cleared", printable(message.topic)
            )
            self.link.publish(message.topic, b"", retain=True)
            return
        if camera is None or not camera.fetched or message.payload != PRESS.encode():
            MQTT_COMMANDS.labels("ignored").inc()
            log.warning(
                "MQTT: %r on %s is not a button press of ours; ignored",
                printable(message.payload[:40].decode(errors="replace")),
                printable(message.topic),
            )
            return
        if self.requests is None:
            MQTT_COMMANDS.labels("refused").inc()
            log.warning("MQTT: snapshot of %s not taken: the daemon is starting", camera.key)
            return
        try:
            event_id = self.requests.take(camera.key)
        except SnapshotRefusedError as exc:
            MQTT_COMMANDS.labels("refused").inc()
            log.warning("MQTT: snapshot of %s not taken: %s", printable(camera.key), exc)
            return
        MQTT_COMMANDS.labels("taken").inc()
        log.info("MQTT: Home Assistant asked for a snapshot of %s: event %s", camera.key, event_id)

    # --- a removed camera's entities, at the first connection -----------------------
    def _retained_topics(self) -> list[str]:
        """Every topic this configuration keeps a retained message on."""
        own = [*self.discovery, self.topics.status, self.topics.availability]
        for camera in self.cameras.values():
            own += [self.topics.camera(camera, what) for what in ("image", "person", "event")]
            if camera.fetched:
                own.append(self.topics.camera(camera, "state"))
        return own

    def _clear_removed(self) -> None:
        """Empty the retained messages the last run kept and this one does not (a camera
        removed or renamed). From our own record: RabbitMQ's MQTT plugin sends no retained
        messages to a wildcard subscription, so asking the broker would not work there.
        The record is written once the broker has taken every removal."""
        own = set(self._retained_topics())
        stale = [topic for topic in _read_record(self.record) if topic not in own]
        self._removals.clear()
        for topic in stale:
            info = self.link.publish(topic, b"", retain=True)
            if info is None or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # the connection is going: again at the next
            self._removals.add(info.mid)
            MQTT_PUBLISHED.labels("removal").inc()
        if stale:
            log.info("MQTT: removing %d entity message(s) no longer configured", len(stale))
        else:
            self._write_record()

    def _write_record(self) -> None:
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            written = self.record.with_name(self.record.name + ".new")
            written.write_text(json.dumps(sorted(self._retained_topics()), indent=1))
            written.replace(self.record)
        except OSError as exc:
            log.warning("MQTT: %s not written (%s); removed cameras stay listed", self.record, exc)
        self._cleared = True


def _read_record(path: Path) -> list[str]:
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("MQTT: %s unreadable (%s); nothing removed", path, exc)
        return []
    if not isinstance(found, list):
        return []
    return [topic for topic in found if isinstance(topic, str) and topic]


def _image(sighting: Sighting) -> bytes:
    """The annotated copy when detection drew one, else the image itself."""
    if sighting.annotated_path:
        try:
            return Path(sighting.annotated_path).read_bytes()
        except OSError as exc:
            log.warning("MQTT: annotated copy unreadable, the image goes instead: %s", exc)
    return sighting.image


def _camera_state(status: CameraStatus) -> bytes:
    return _json(
        {
            # Home Assistant's own "unknown": an MQTT sensor whose template renders None.
            "state": None if status.up is None else status.state,
            "reason": status.reason.value if status.reason else None,
            "last_error": redact(status.last_error) if status.last_error else None,
            "since": iso_time(status.since) if status.since else None,
            "last_seen": iso_time(status.last_seen) if status.last_seen else None,
        }
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
