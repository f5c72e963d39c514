"""The labelled set and the feedback that fills it: the original image copied, what detection
said kept beside the verdict, a second verdict replacing the first, the bound, the refusals
(each logged and counted), many threads at once, and the set as a reader sees it."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapshot_processor.detection.labelled import (
    EventNotFoundError,
    Feedback,
    FeedbackError,
    LabelledSet,
    LabelledSetError,
    VerdictError,
    count_entries,
    read_entries,
)
from snapshot_processor.ops.recent import EventRecord, RecentEvents
from tests.support.ftp import jpeg
from tests.support.metrics import sample

PERSON_SAID = [{"label": "Person", "confidence": 97.5, "person": True, "box": None}]


def event(event_id: str, path: Path, **fields: Any) -> EventRecord:
    record = EventRecord(
        event_id=event_id,
        camera_key="Front Door camera",
        device_label="Front Door",
        taken=1_800_000_000.0,
        source="fetch",
        image_bytes=path.stat().st_size,
        person=False,
        detections=[],
        detection_note=None,
        storage_path=str(path),
        annotated_path=None,
        storage_url=None,
    )
    return dataclasses.replace(record, **fields)


def picture(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(text))
    return path


@dataclasses.dataclass
class Setup:
    root: Path
    recent: RecentEvents
    labelled: LabelledSet
    feedback: Feedback

    def add(self, event_id: str, **fields: Any) -> Path:
        path = picture(self.root / "snapshots" / f"{event_id}.jpg", event_id)
        self.recent.add(event(event_id, path, **fields))
        return path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    root = tmp_path / "data"
    recent = RecentEvents(root / "recent-events.sqlite3")
    labelled = LabelledSet(root, 10)
    made = Setup(root, recent, labelled, Feedback(labelled, recent))
    try:
        yield made
    finally:
        made.labelled.close()
        recent.close()


def test_a_verdict_keeps_the_original_image_and_what_detection_said(setup: Setup) -> None:
    original = setup.add(
        "e1",
        person=True,
        detections=PERSON_SAID,
        decided_by="rekognition",
        annotated_path=str(picture(setup.root / "snapshots" / "e1.annotated.jpg", "boxes")),
    )
    before = sample("detection_feedback_total", source="page", verdict="person")
    note = setup.feedback.record("e1", "person", "page")
    assert note == "stored: event e1 (Front Door camera) labelled a person"
    assert sample("detection_feedback_total", source="page", verdict="person") == before + 1
    [kept] = setup.labelled.entries()
    assert (kept.event_id, kept.verdict, kept.person, kept.camera, kept.source) == (
        "e1",
        "person",
        True,
        "Front Door camera",
        "page",
    )
    assert kept.taken == 1_800_000_000.0
    assert time.time() - kept.labelled_at < 60
    assert (kept.decided_by, kept.detections) == ("rekognition", PERSON_SAID)
    # The camera's own image, never the copy with boxes drawn on it; under labelled/.
    assert kept.path.read_bytes() == original.read_bytes()
    assert kept.path.parent == setup.root / "labelled" / "images"

    # A second verdict on the same event takes the first one's place.
    assert setup.feedback.record("e1", "not_person", "home_assistant").startswith("replaced: ")
    [kept] = setup.labelled.entries()
    assert (kept.verdict, kept.source) == ("not_person", "home_assistant")
    assert len(list(kept.path.parent.iterdir())) == 1

    # On disk: a new set over the same folder finds it, as a reader does meanwhile.
    assert [e.verdict for e in read_entries(setup.root)] == ["not_person"]
    setup.labelled.close()
    again = LabelledSet(setup.root, 10)
    try:
        assert [(e.event_id, e.verdict) for e in again.entries()] == [("e1", "not_person")]
    finally:
        again.close()
    setup.labelled = LabelledSet(setup.root, 10)  # for the fixture to close
    assert count_entries(setup.root) == 1


def refused(source: str, reason: str) -> float:
    return sample("detection_feedback_refused_total", source=source, reason=reason)


def test_each_refusal_says_why_is_logged_and_counted(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.add("e1")
    gone = setup.add("e2")
    gone.unlink()
    outside = picture(setup.root.parent / "elsewhere" / "e3.jpg", "not ours")
    setup.recent.add(event("e3", outside))
    cases: list[tuple[str, str, type[Exception], str, str]] = [
        ("e1", "maybe", VerdictError, "unknown_verdict", "must be 'person' or 'not_person'"),
        ("nope", "person", EventNotFoundError, "unknown_event", "no event 'nope' among"),
        ("e2", "person", EventNotFoundError, "image_gone", "no longer on disk"),
        # A record naming a file outside the data root: nothing is read from there.
        ("e3", "not_person", EventNotFoundError, "image_gone", "no longer on disk"),
    ]
    for event_id, verdict, error, reason, words in cases:
        before = refused("bus", reason)
        caplog.clear()
        with pytest.raises(error, match=words) as raised:
            setup.feedback.record(event_id, verdict, "bus")
        assert isinstance(raised.value, FeedbackError)
        assert raised.value.reason == reason
        assert refused("bus", reason) == before + 1
        assert any(
            line.startswith(f"detection feedback from bus on event {event_id} refused: ")
            and words in line
            for line in caplog.messages
        ), caplog.messages
    # What the bus's stage and Home Assistant tell apart: never keepable, or try again later.
    assert issubclass(VerdictError, ValueError)
    assert issubclass(EventNotFoundError, ValueError)
    assert issubclass(EventNotFoundError, LookupError)
    assert setup.labelled.entries() == []
    assert list((setup.root / "labelled" / "images").iterdir()) == []


def test_a_disk_that_fails_is_an_oserror_counted_and_nothing_half_kept(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.add("e1")
    images = setup.root / "labelled" / "images"
    shutil.rmtree(images)
    images.write_text("a file where the folder belongs")
    before = refused("page", "store_failed")
    with pytest.raises(LabelledSetError) as raised:
        setup.feedback.record("e1", "person", "page")
    assert isinstance(raised.value, OSError)
    assert refused("page", "store_failed") == before + 1
    assert "detection feedback from page on event e1 not kept: the labelled set" in caplog.text
    assert setup.labelled.entries() == []


def test_the_set_keeps_the_newest_up_to_its_bound_files_and_rows(tmp_path: Path) -> None:
    root = tmp_path / "data"
    recent = RecentEvents(root / "recent-events.sqlite3")
    labelled = LabelledSet(root, 3)
    feedback = Feedback(labelled, recent)
    images = root / "labelled" / "images"
    try:
        for n in range(5):
            path = picture(root / "snapshots" / f"e{n}.jpg", f"e{n}")
            recent.add(event(f"e{n}", path))
            feedback.record(f"e{n}", "person" if n % 2 else "not_person", "page")
        # A verdict again on the oldest kept: it becomes the newest.
        feedback.record("e2", "person", "page")
        kept = labelled.entries()
        assert [e.event_id for e in kept] == ["e3", "e4", "e2"]
        assert sorted(p.name for p in images.iterdir()) == sorted(e.path.name for e in kept)
        assert [e.path.read_bytes() for e in kept] == [
            (root / "snapshots" / f"{n}.jpg").read_bytes() for n in ("e3", "e4", "e2")
        ]
    finally:
        labelled.close()
        recent.close()
    # A smaller bound at the next start, and an image no row names (a crash between
    # the two): both tidied when the set opens.
    (images / "orphan.jpg").write_bytes(b"left by a crash")
    smaller = LabelledSet(root, 2)
    try:
        assert [e.event_id for e in smaller.entries()] == ["e4", "e2"]
        assert sorted(p.name for p in images.iterdir()) == sorted(
            e.path.name for e in smaller.entries()
        )
    finally:
        smaller.close()


def test_verdicts_from_many_threads_at_once(setup: Setup) -> None:
    for n in range(8):
        setup.add(f"e{n}")
    errors: list[BaseException] = []

    def give(n: int) -> None:
        try:
            for round_ in range(3):
                source = ("page", "bus", "home_assistant")[round_]
                setup.feedback.record(f"e{n}", "person" if round_ % 2 else "not_person", source)
                setup.feedback.record("e0", "person", source)  # one event for all of them
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=give, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    kept = {e.event_id: e.verdict for e in setup.labelled.entries()}
    assert sorted(kept) == [f"e{n}" for n in range(8)]
    assert all(kept[f"e{n}"] == "not_person" for n in range(1, 8))
    assert len(list((setup.root / "labelled" / "images").iterdir())) == 8


def test_no_set_yet_reads_as_empty(tmp_path: Path) -> None:
    assert read_entries(tmp_path) == []
    assert count_entries(tmp_path) == 0
    assert not (tmp_path / "labelled").exists()  # reading made nothing
