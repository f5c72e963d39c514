"""What the daemon did lately: the recent events and each camera's latest snapshot.

A view for people, not a guarantee: the newest ``keep`` events (no image bytes) in SQLite,
written at ``synchronous=NORMAL``; a failed write is logged and counted, never in an event's way.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from pylib.sqlite_file import is_damaged, move_aside, transaction
from snapshot_processor.contract.messages import SnapshotMessage

log = logging.getLogger(__name__)

ACTIVITY_FAILURES = Counter(
    "recent_events_write_failures_total", "Events not recorded for the status page"
)

# Only a few things of each detection are shown; boxes are drawn from the annotated copy.
_DETECTION_KEYS = ("label", "confidence", "person", "box")


@dataclass(frozen=True)
class EventRecord:
    """One event as the status page and the API show it (no image bytes)."""

    event_id: str
    camera_key: str
    device_label: str
    taken: float
    source: str
    image_bytes: int
    person: bool
    detections: list[dict[str, Any]]
    detection_note: str | None
    storage_path: str
    annotated_path: str | None
    storage_url: str | None
    # The backend whose answer stood (None: not analysed); absent from older records.
    decided_by: str | None = None

    @classmethod
    def of(cls, snap: SnapshotMessage) -> EventRecord:
        """The record of a snapshot that became an event."""
        detections = [
            {key: item[key] for key in _DETECTION_KEYS if key in item} for item in snap.detections
        ]
        return cls(
            event_id=snap.event_id,
            camera_key=snap.camera_key,
            device_label=snap.device_label,
            taken=snap.taken,
            source=snap.source,
            image_bytes=len(snap.image),
            person=any(bool(item.get("person")) for item in snap.detections),
            detections=detections,
            detection_note=snap.detection_error or snap.detection_skipped,
            storage_path=snap.storage_path,
            annotated_path=snap.annotated_path,
            storage_url=snap.storage_url,
            decided_by=snap.decided_by,
        )

    def as_json(self) -> dict[str, Any]:
        """For the API, times as unix seconds; shallow, as ``asdict``'s deep copy cost more."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


# An event's id inside its record: an index on it, no column, so older files need no change.
_EVENT_ID = "json_extract(record, '$.event_id')"

# The writer thread writes when this many wait, or this long after the first: the count is
# well above a burst's cameras, so a burst's write comes after its last events.
WRITE_AFTER_EVENTS = 256
WRITE_AFTER_SECONDS = 0.5


class RecentEvents:
    """The newest ``keep`` events, in SQLite at ``path``; safe to use from any thread.

    :meth:`add` only queues for a writer thread; every read writes what waits first. A crash
    loses at most the last half second of this view (the events themselves were published).
    """

    def __init__(self, path: Path, keep: int = 500) -> None:
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()  # the database
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            # Only a view for people: a damaged file is set aside, never a failed start.
            if not is_damaged(exc):
                raise
            aside = move_aside(path)
            log.warning("recent events: %s was damaged (%s); set aside as %s", path, exc, aside)
            self._db = self._open()
        self._added = 0
        self._waiting: list[EventRecord] = []
        self._queued = threading.Condition()  # the waiting list, and the writer's wake-up
        self._closing = False
        # Started with the first event: a daemon that fails to start leaves no thread.
        self._writer: threading.Thread | None = None
        self._writer_failed = False

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " camera TEXT NOT NULL, record TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS events_camera ON events (camera, seq)")
            db.execute(f"CREATE INDEX IF NOT EXISTS events_id ON events ({_EVENT_ID})")
            db.execute("SELECT COUNT(*) FROM events").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def add(self, record: EventRecord) -> None:
        """Queue one event for the writer; never waits for a write, never raises."""
        with self._queued:
            self._waiting.append(record)
            if self._writer is None and not self._closing:
                self._start_writer()
            if len(self._waiting) in (1, WRITE_AFTER_EVENTS):
                self._queued.notify()

    def _start_writer(self) -> None:
        # A daemon thread, not a Worker: a view never closed must not keep the process, and
        # reads and close() write whatever it has not, so losing it costs only the batching.
        writer = threading.Thread(target=self._write_when_due, name="recent-events", daemon=True)
        try:
            writer.start()
        except RuntimeError as exc:  # no thread to be had now: reads and close() still write
            if not self._writer_failed:
                log.warning("recent events: no writer thread (%s); written when read", exc)
            self._writer_failed = True
            return
        self._writer = writer

    def _write_when_due(self) -> None:
        while True:
            with self._queued:
                while not self._waiting and not self._closing:
                    self._queued.wait()
                if self._closing:
                    return  # close() writes what waits
                due = time.monotonic() + WRITE_AFTER_SECONDS
                while len(self._waiting) < WRITE_AFTER_EVENTS and not self._closing:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._queued.wait(left)
            with self._lock:
                self._write()

    def _write(self) -> None:
        """Write the waiting events in one transaction (with the database lock held)."""
        with self._queued:
            waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        try:
            with transaction(self._db) as db:
                db.executemany(
                    "INSERT INTO events (camera, record) VALUES (?, ?)",
                    [
                        (record.camera_key, json.dumps(record.as_json(), default=str))
                        for record in waiting
                    ],
                )
                before, self._added = self._added, self._added + len(waiting)
                if before // 50 != self._added // 50:  # trim now and then, not every time
                    db.execute(
                        "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?",
                        (self.keep,),
                    )
        except Exception as exc:  # the view is never worth the writer thread
            ACTIVITY_FAILURES.inc(len(waiting))
            log.warning(
                "recent events: could not record %d event(s), %s the first: %s",
                len(waiting),
                waiting[0].event_id,
                exc,
            )

    def latest(
        self, limit: int, *, camera: str | None = None, person: bool = False
    ) -> list[EventRecord]:
        """The newest events first (of ``camera``, with a person), at most ``limit`` (and
        never more than ``keep``)."""
        where = " AND camera = ?" if camera is not None else ""
        where += " AND json_extract(record, '$.person')" if person else ""
        with self._lock:
            self._write()
            rows = self._db.execute(
                f"SELECT record FROM events WHERE 1{where} ORDER BY seq DESC LIMIT ?",
                (*([camera] if camera is not None else []), max(0, min(limit, self.keep))),
            ).fetchall()
        return [_record(row[0]) for row in rows]

    def find(self, event_id: str) -> EventRecord | None:
        """The event with this id, while it is among the recent ones."""
        with self._lock:
            self._write()
            row = self._db.execute(
                f"SELECT record FROM events WHERE {_EVENT_ID} = ? LIMIT 1", (event_id,)
            ).fetchone()
        return _record(row[0]) if row else None

    def cameras(self) -> list[str]:
        """The key of every camera with a recent event."""
        with self._lock:
            self._write()
            rows = self._db.execute("SELECT DISTINCT camera FROM events").fetchall()
        return [row[0] for row in rows]

    def latest_of(self, camera_key: str) -> EventRecord | None:
        """The camera's newest event, if it has one."""
        with self._lock:
            self._write()
            row = self._db.execute(
                "SELECT record FROM events WHERE camera = ? ORDER BY seq DESC LIMIT 1",
                (camera_key,),
            ).fetchone()
        return _record(row[0]) if row else None

    def close(self) -> None:
        """End the writer thread, write what waits and close the database."""
        with self._queued:
            self._closing = True
            self._queued.notify()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._lock:
            self._write()
            self._db.close()


def _record(text: str) -> EventRecord:
    return EventRecord(**json.loads(text))
