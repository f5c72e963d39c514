"""The detection stage over real inproc sockets, with stand-in detectors for the outside world."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from pylib.chain.envelope import Envelope
from pylib.chain.settle import Settlement, ack_token
from pylib.chain.sockets import Sender
from pylib.runtime.health import Health
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.detection.base import (
    Box,
    Detection,
    DetectionError,
    Detector,
    NoDetector,
)
from snapshot_processor.detection.guard import CostGuard
from snapshot_processor.detection.stage import DetectionStage
from tests.support.wait import wait_until
from tests.support.wire import Wire as BaseWire

PERSON = Detection("Person", 97.0, Box(0.25, 0.25, 0.25, 0.5), True)
RESULT_KEYS = {
    "detections",
    "analysed",
    "detection_error",
    "detection_skipped",
    "annotated_path",
    "decided_by",
    "cascade",
    "local_person_confidence",
}


def jpeg(shade: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, shade, shade)).save(buffer, "JPEG")
    return buffer.getvalue()


class ScriptedDetector:
    """Stands in for a backend: answers ``result`` (or raises it) after ``delay`` seconds."""

    name = "scripted"

    def __init__(
        self, result: list[Detection] | Exception | None = None, delay: float = 0.0
    ) -> None:
        self.result = result if result is not None else [PERSON]
        self.delay = delay
        self.calls: list[bytes] = []

    def detect(self, image: bytes) -> list[Detection]:
        self.calls.append(image)
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.result, Exception):
            raise self.result
        return list(self.result)

    def close(self) -> None:
        return None

    def health(self) -> Health:
        return Health()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Wire(BaseWire):
    """The stage's ends, and snapshots to send into it."""

    def __init__(self, root: Path) -> None:
        super().__init__("detect")
        self.root = root
        self.push = Sender(self.inbox, linger=0)

    def snapshot(self, camera: str = "front camera", image: bytes | None = None) -> Envelope:
        event_id = uuid.uuid4().hex
        envelope = SnapshotMessage(
            event_id=event_id,
            camera_key=camera,
            device_label=camera.title(),
            image=image if image is not None else jpeg(),
            taken=time.time(),
            storage_path=str(self.root / f"{event_id}.jpg"),
            source="fetch",
            settlement=Settlement(ack_token("inproc://acks", tag=1)),
        ).envelope()
        self.push.socket.send(envelope.pack())
        return envelope

    def close(self) -> None:
        self.push.close()
        super().close()


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Wire]:
    ends = Wire(tmp_path)
    try:
        yield ends
    finally:
        ends.close()


@pytest.fixture
def start(wire: Wire) -> Iterator[Any]:
    stages: list[DetectionStage] = []

    def starter(
        detector: Detector, guard: CostGuard | None = None, **options: Any
    ) -> DetectionStage:
        stage = DetectionStage(
            f"detect-{len(stages)}",
            threading.Event(),
            detector=detector,
            guard=guard or CostGuard(),
            inbox=wire.inbox,
            outbox=wire.outbox,
            **options,
        )
        stage.start()
        assert stage.ready.wait(5)
        stages.append(stage)
        return stage

    yield starter
    for stage in stages:
        assert stage.stop_and_join(10)


def test_person_is_found_and_annotated(wire: Wire, start: Any) -> None:
    detector = ScriptedDetector([PERSON, Detection("Tree", 80.0, None, False)])
    start(detector)
    sent = wire.snapshot()
    (out,) = wire.receive(1)
    assert out.id == sent.id
    assert out.kind == "snapshot"
    body = out.body
    assert set(body) == set(sent.body)
    unchanged = set(sent.body) - RESULT_KEYS
    assert {key: body[key] for key in unchanged} == {key: sent.body[key] for key in unchanged}
    assert body["analysed"] is True
    assert body["detection_error"] is None
    assert body["detection_skipped"] is None
    assert body["detections"] == [PERSON.as_dict(), Detection("Tree", 80.0, None, False).as_dict()]
    annotated = Path(body["annotated_path"])
    assert annotated == Path(sent.body["storage_path"]).with_name(
        Path(sent.body["storage_path"]).stem + ".annotated.jpg"
    )
    with Image.open(annotated) as picture:
        assert (picture.format, picture.size) == ("JPEG", (64, 48))
        assert picture.getpixel((16, 12)) != picture.getpixel((2, 2))  # the red box's corner
    assert detector.calls == [sent.body["image"]]


def test_nothing_located_means_no_annotated_copy(wire: Wire, start: Any) -> None:
    start(ScriptedDetector([Detection("Outdoors", 90.0, None, False)]))
    sent = wire.snapshot()
    (out,) = wire.receive(1)
    assert out.body["analysed"] is True
    assert out.body["annotated_path"] is None
    assert list(Path(sent.body["storage_path"]).parent.iterdir()) == []


def test_slow_detector_keeps_the_newest_per_camera_and_drops_nothing(
    wire: Wire, start: Any
) -> None:
    detector = ScriptedDetector(delay=0.3)
    start(detector)
    busy_before = counter("detection_skipped_total", reason="busy")
    sent = [wire.snapshot("porch camera", jpeg(index)) for index in range(20)]
    out = wire.receive(20)
    assert sorted(e.id for e in out) == sorted(e.id for e in sent)  # every one, once
    busy = [e for e in out if e.body["detection_skipped"] == "busy"]
    analysed = [e for e in out if e.body["analysed"]]
    assert len(busy) + len(analysed) == 20
    assert len(busy) >= 15  # the intake kept pulling while the detector slept
    assert len(analysed) == len(detector.calls) <= 5
    assert sent[-1].id in {e.id for e in analysed}  # the newest is never replaced
    assert all(e.body["detections"] == [] for e in busy)
    assert counter("detection_skipped_total", reason="busy") - busy_before == len(busy)


def test_cameras_do_not_replace_each_other(wire: Wire, start: Any) -> None:
    detector = ScriptedDetector(delay=0.05)
    start(detector)
    sent = [wire.snapshot(f"camera {index}", jpeg(index * 10)) for index in range(5)]
    out = wire.receive(5)
    assert {e.id for e in out} == {e.id for e in sent}
    assert all(e.body["analysed"] for e in out)


def test_same_image_twice_is_not_sent_twice(wire: Wire, start: Any) -> None:
    detector = ScriptedDetector()
    start(detector, CostGuard(dedupe_window=60))
    before = counter("detection_skipped_total", reason="duplicate")
    image = jpeg(42)
    wire.snapshot("camera a", image)
    wire.snapshot("camera b", image)
    out = wire.receive(2)
    assert sorted(str(e.body["detection_skipped"]) for e in out) == ["None", "duplicate"]
    assert len(detector.calls) == 1
    assert counter("detection_skipped_total", reason="duplicate") - before == 1


@pytest.mark.parametrize(
    ("guard", "reason"),
    [(CostGuard(max_per_hour=2), "hourly_cap"), (CostGuard(max_per_day=2), "daily_cap")],
)
def test_caps_stop_paid_calls(wire: Wire, start: Any, guard: CostGuard, reason: str) -> None:
    detector = ScriptedDetector()
    start(detector, guard)
    for index in range(4):
        wire.snapshot(f"camera {index}", jpeg(index * 20))
    out = wire.receive(4)
    assert len(out) == 4
    assert sorted(str(e.body["detection_skipped"]) for e in out) == ["None", "None", reason, reason]
    assert len(detector.calls) == 2


def test_detection_error_still_forwards_the_event(wire: Wire, start: Any) -> None:
    start(ScriptedDetector(DetectionError("throttled", "ThrottlingException: slow down")))
    before = counter("detection_errors_total", backend="scripted", reason="throttled")
    sent = wire.snapshot()
    (out,) = wire.receive(1)
    assert out.id == sent.id
    assert out.body["analysed"] is False
    assert out.body["detections"] == []
    assert out.body["detection_error"] == "throttled: ThrottlingException: slow down"
    assert counter("detection_errors_total", backend="scripted", reason="throttled") == before + 1


def test_a_crashing_detector_costs_neither_event_nor_thread(wire: Wire, start: Any) -> None:
    detector = ScriptedDetector(RuntimeError("bug with password=hunter22"))
    start(detector)
    wire.snapshot("camera a")
    (first,) = wire.receive(1)
    assert first.body["detection_error"].startswith("error: RuntimeError")
    assert "hunter22" not in first.body["detection_error"]
    detector.result = [PERSON]
    wire.snapshot("camera a", jpeg(7))
    (second,) = wire.receive(1)
    assert second.body["analysed"] is True


def test_other_messages_pass_through_and_junk_is_dropped(wire: Wire, start: Any) -> None:
    start(ScriptedDetector())
    done = Envelope("amqp.done", {"ack": {"tag": 7}, "parts": 1})
    wire.push.socket.send(b"\xc1 not an envelope")
    wire.push.send(done)
    (out,) = wire.receive(1)
    assert out == done


def test_snapshot_without_image_is_settled_by_a_done_mark(wire: Wire, start: Any) -> None:
    # No event can carry it (the image is required on the wire), but its delivery is settled.
    detector = ScriptedDetector()
    start(detector)
    before = counter("chain_messages_rejected_total", stage="detect-0", reason="MessageError")
    sent = wire.snapshot(image=b"")
    (out,) = wire.receive(1)
    assert out.kind == "amqp.done"
    assert out.body == {"ack": sent.body["ack"], "parts": 1}
    assert detector.calls == []
    assert (
        counter("chain_messages_rejected_total", stage="detect-0", reason="MessageError")
        == before + 1
    )


def test_backend_none_passes_snapshots_on(wire: Wire, start: Any) -> None:
    start(NoDetector())
    sent = wire.snapshot()
    (out,) = wire.receive(1)
    assert out.id == sent.id
    assert out.body["analysed"] is False
    assert out.body["detection_skipped"] == "disabled"


def test_stop_sends_everything_waiting_on(wire: Wire, start: Any) -> None:
    detector = ScriptedDetector(delay=0.3)
    stage = start(detector)
    sent = [wire.snapshot(f"camera {index}", jpeg(index * 30)) for index in range(3)]
    time.sleep(0.05)  # let the detector pick the first one up
    assert stage.stop_and_join(5)
    out = wire.receive(3, timeout=2)
    assert sorted(e.id for e in out) == sorted(e.id for e in sent)
    assert len(detector.calls) == sum(e.body["analysed"] for e in out) == 1
    assert sorted(str(e.body["detection_skipped"]) for e in out) == ["None", "stopping", "stopping"]


def test_stop_gives_up_on_a_stuck_detector_without_losing_its_snapshot(
    wire: Wire, start: Any
) -> None:
    detector = ScriptedDetector(delay=1.0)
    stage = start(detector, stop_timeout=0.2)
    sent = wire.snapshot()
    wait_until(lambda: detector.calls, 5, step=0.01)
    assert stage.stop_and_join(5)
    (out,) = wire.receive(1, timeout=2)
    assert out.id == sent.id
    assert out.body["detection_skipped"] == "stopping"
    assert wire.receive(1, timeout=1.2) == []  # the late result is not sent a second time
