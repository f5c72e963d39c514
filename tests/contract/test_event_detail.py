"""``event_detail`` as the original wrote it: persons found, and every label returned.

Rekognition (a loopback fake) answers; the real detector, snapshot message and event
builder make the event; the test reads the published bytes as a consumer would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.contract.publication import EventBuilder
from snapshot_processor.detection.rekognition import RekognitionDetector
from tests.support.fakes.rekognition import FakeRekognition, label

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64 + b"\xff\xd9"


@pytest.fixture
def detector(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeRekognition, Any]]:
    # boto3's own configuration: credentials for the outside service.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
    with FakeRekognition() as fake:
        real = RekognitionDetector("eu-west-1", endpoint_url=fake.base_url)
        try:
            yield fake, real
        finally:
            real.close()


def published_detail(detector: RekognitionDetector) -> str | None:
    """Detect on a snapshot and build its event; the ``event_detail`` a consumer reads."""
    snap = SnapshotMessage(
        event_id="e" * 32,
        camera_key="Front Door camera",
        device_label="Front Door",
        image=JPEG,
        taken=1_700_000_000.0,
        storage_path="/data/front.jpg",
        source="fetch",
    )
    found = [d.as_dict() for d in detector.detect(JPEG)]
    analysed = snap.with_detection(detections=found, analysed=True)
    request = EventBuilder("home", "snapshot", "garage")(analysed.envelope())
    event = msgpack.unpackb(request.body["body"], raw=False)
    entry: dict[str, Any] = event["inputs"][0]
    return entry.get("event_detail")


REPLIES: dict[str, tuple[list[dict[str, Any]], str | None]] = {
    # Two people located, two more labels: 2 persons among 3 labels (not 2 "other" things).
    "two people, a car, a tree": (
        [
            label("Person", 98.0, boxes=[(0.1, 0.1, 0.2, 0.5), (0.5, 0.1, 0.2, 0.5)]),
            label("Car", 91.0, boxes=[(0.6, 0.6, 0.3, 0.3)]),
            label("Tree", 88.0),
        ],
        "2 person(s) and 3 things",
    ),
    # Three cars located: one label, counted once.
    "one person, three cars": (
        [
            label("Person", 97.0),
            label(
                "Car",
                90.0,
                boxes=[(0.0, 0.5, 0.2, 0.2), (0.3, 0.5, 0.2, 0.2), (0.6, 0.5, 0.2, 0.2)],
            ),
        ],
        "1 person(s) and 2 things",
    ),
    "a person alone": (
        [label("Person", 99.0, boxes=[(0.1, 0.1, 0.2, 0.5)])],
        "1 person(s) and 1 things",
    ),
    "nobody": ([label("Car", 90.0), label("Tree", 80.0)], None),
}


@pytest.mark.parametrize("case", sorted(REPLIES))
def test_event_detail_counts_persons_and_every_label(
    detector: tuple[FakeRekognition, RekognitionDetector], case: str
) -> None:
    fake, real = detector
    labels, expected = REPLIES[case]
    fake.reply_labels(labels)
    assert published_detail(real) == expected
