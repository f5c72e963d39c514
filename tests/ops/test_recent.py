"""The recent events the status page shows: written together when they come quickly."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.ops.recent import WRITE_AFTER_EVENTS, EventRecord, RecentEvents
from tests.support.metrics import sample
from tests.support.wait import wait_until


def record(n: int, camera: str = "cam1 camera") -> EventRecord:
    return EventRecord(
        event_id=f"e{n}",
        camera_key=camera,
        device_label="Cam1",
        taken=1_700_000_000.0 + n,
        source="fetch",
        image_bytes=1000 + n,
        person=False,
        detections=[],
        detection_note=None,
        storage_path=f"/data/{n}.jpg",
        annotated_path=None,
        storage_url=None,
    )


def rows_on_disk(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def test_events_in_quick_succession_are_written_together_and_read_in_full(
    tmp_path: Path,
) -> None:
    path = tmp_path / "recent.sqlite3"
    recent = RecentEvents(path, keep=500)
    try:
        recent.add(record(0))  # the writer writes it within half a second
        assert wait_until(lambda: rows_on_disk(path) == 1)
        for n in range(1, 5):
            recent.add(record(n))
        assert rows_on_disk(path) == 1  # waiting in memory, not one write each
        # A reader sees every event recorded, the waiting ones included.
        assert [r.event_id for r in recent.latest(10)] == ["e4", "e3", "e2", "e1", "e0"]
        assert rows_on_disk(path) == 5
        for n in range(5, 5 + WRITE_AFTER_EVENTS):
            recent.add(record(n))
        assert wait_until(lambda: rows_on_disk(path) == 5 + WRITE_AFTER_EVENTS)
        recent.add(record(100, camera="cam2 camera"))
        latest = recent.latest_of("cam2 camera")
        assert latest is not None
        assert latest.event_id == "e100"
        recent.add(record(101))
    finally:
        recent.close()
    # What waited at close is on disk for the next start.
    reopened = RecentEvents(path, keep=500)
    try:
        assert reopened.latest(1)[0].event_id == "e101"
    finally:
        reopened.close()


def test_adding_never_waits_for_the_database(tmp_path: Path) -> None:
    path = tmp_path / "recent.sqlite3"
    recent = RecentEvents(path, keep=500)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # the file is locked: no write can go through

        def add_all() -> None:
            for n in range(WRITE_AFTER_EVENTS + 1):
                recent.add(record(n))

        adder = threading.Thread(target=add_all)
        adder.start()
        adder.join(3)
        finished = not adder.is_alive()
        other.execute("COMMIT")
        adder.join()
        assert finished, "add() waited for the locked database"
        assert wait_until(lambda: rows_on_disk(path) == WRITE_AFTER_EVENTS + 1)
    finally:
        other.close()
        recent.close()


def test_a_failed_write_is_counted_and_the_next_events_still_recorded(tmp_path: Path) -> None:
    path = tmp_path / "recent.sqlite3"
    recent = RecentEvents(path, keep=500)
    failures = sample("recent_events_write_failures_total")
    try:
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE events RENAME TO gone")
        recent.add(record(1))  # the writer's write fails
        assert wait_until(lambda: sample("recent_events_write_failures_total") == failures + 1)
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE gone RENAME TO events")
        recent.add(record(2))
        assert [r.event_id for r in recent.latest(5)] == ["e2"]  # e1 is not retried
    finally:
        recent.close()


class _Unrecordable:
    """A detection value that cannot be recorded: JSON has no form for it, and its text
    (the fallback the record is written with) cannot be had either."""

    def __str__(self) -> str:
        raise ValueError("no text")


def test_an_event_that_cannot_be_recorded_leaves_the_writer_running(tmp_path: Path) -> None:
    path = tmp_path / "recent.sqlite3"
    recent = RecentEvents(path, keep=500)
    failures = sample("recent_events_write_failures_total")
    try:
        bad = record(1)
        bad.detections.append({"label": _Unrecordable()})
        recent.add(bad)
        assert wait_until(lambda: sample("recent_events_write_failures_total") == failures + 1)
        recent.add(record(2))  # the writer is still there: written without a read
        assert wait_until(lambda: rows_on_disk(path) == 1)
    finally:
        recent.close()
    assert not [t for t in threading.enumerate() if t.name == "recent-events"]


def test_an_event_keeps_whose_answer_stood_and_older_records_still_read(tmp_path: Path) -> None:
    snap = SnapshotMessage(
        event_id="e1",
        camera_key="cam1 camera",
        device_label="Cam1",
        image=b"jpeg",
        taken=1_700_000_000.0,
        storage_path="/data/1.jpg",
        source="fetch",
    ).with_detection(
        detections=[{"label": "Person", "confidence": 97.0, "person": True}],
        analysed=True,
        decided_by="rekognition",
        cascade="unsure",
    )
    path = tmp_path / "recent.sqlite3"
    recent = RecentEvents(path)
    try:
        recent.add(EventRecord.of(snap))
        found = recent.find("e1")
        assert found is not None
        assert (found.decided_by, found.person) == ("rekognition", True)
        # A record written before the field existed reads as decided by nobody known.
        older = record(2).as_json()
        del older["decided_by"]
        with sqlite3.connect(path) as db:
            db.execute(
                "INSERT INTO events (camera, record) VALUES (?, ?)",
                ("cam1 camera", json.dumps(older)),
            )
        again = recent.find("e2")
        assert again is not None
        assert again.decided_by is None
    finally:
        recent.close()
