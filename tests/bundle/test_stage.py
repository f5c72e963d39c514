"""The bundle stage over real inproc sockets: a frame passes on before its bundle's event,
the event goes when every burst has ended and every frame is through, or at the deadline,
and a bundle never collected again is announced at the next start."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylib.chain.settle import Settlement, ack_token
from snapshot_processor.bundle.seal import Sealer
from snapshot_processor.bundle.stage import BundleStage, close_interrupted
from snapshot_processor.bundle.store import FRAME, SEALED, BundleStore, NewFile
from snapshot_processor.contract.messages import (
    BUNDLE_EVENT_KIND,
    SNAPSHOT_KIND,
    BundleCameraMessage,
    BundleEventMessage,
    SnapshotMessage,
)
from tests.support.wait import wait_until
from tests.support.wire import Wire
from tests.support.wire import wire as wire_for

GROUP = "2026/12/07/20261207T200102Z_hall-pir_abcdef12"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BundleStore]:
    opened = BundleStore(tmp_path / "bundles.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    with wire_for("bundles") as ends:
        yield ends


@pytest.fixture
def closed() -> list[str]:
    return []


def start(
    store: BundleStore, wire: Wire, root: Path, closed: list[str], **options: Any
) -> BundleStage:
    """The stage between the wire's ends, without cloud storage, started."""
    started = BundleStage(
        "bundles-test",
        threading.Event(),
        store=store,
        sealer=Sealer(store, root, None),
        closed=closed.append,
        inbox=wire.inbox,
        outbox=wire.outbox,
        **{"deadline": 30.0, **options},
    )
    started.start()
    assert started.ready.wait(5)
    return started


@pytest.fixture
def stage(
    store: BundleStore, wire: Wire, tmp_path: Path, closed: list[str]
) -> Iterator[BundleStage]:
    started = start(store, wire, tmp_path, closed, deadline=1.0)
    yield started
    assert started.stop_and_join(5)


def camera(opened: float, *, ended: bool = False) -> BundleCameraMessage:
    return BundleCameraMessage("b1", GROUP, opened, "hall pir", "yard", "Yard", 1, ended=ended)


def frame(tmp_path: Path, opened: float) -> SnapshotMessage:
    path = tmp_path / "yard-1.jpg"
    path.write_bytes(b"\xff\xd8 yard \xff\xd9")
    return SnapshotMessage(
        event_id="e1",
        camera_key="yard",
        device_label="Yard",
        image=path.read_bytes(),
        taken=opened + 0.2,
        storage_path=str(path),
        source="fetch",
        settlement=Settlement(ack_token("inproc://acks", tag=1)),
        bundle_id="b1",
        frame=1,
        bundle_group=GROUP,
    )


def recorded(store: BundleStore, snap: SnapshotMessage, opened: float) -> None:
    """What the storage stage records before the frame comes here."""
    store.record(
        joined=[("b1", GROUP, opened, "hall pir", "yard", "Yard", 1)],
        files=[
            NewFile("b1", Path(snap.storage_path), FRAME, snap.taken, snap.image, "e1", "yard", 1)
        ],
        ended=[("b1", "yard", None, 0, 1)],
    )


def test_the_frame_goes_on_first_then_its_complete_bundles_event(
    stage: BundleStage, store: BundleStore, wire: Wire, tmp_path: Path, closed: list[str]
) -> None:
    opened = time.time()
    snap = frame(tmp_path, opened)
    recorded(store, snap, opened)
    with wire.sender() as sender:
        sender.send(camera(opened).envelope())
        sender.send(camera(opened, ended=True).envelope())
        sender.send(snap.envelope())
        out = wire.receive(2)
    assert [e.kind for e in out] == [SNAPSHOT_KIND, BUNDLE_EVENT_KIND]
    event = BundleEventMessage.read(out[1])
    assert event.manifest["complete_by"] == "all cameras"
    assert [f["event_id"] for f in event.manifest["frames"]] == ["e1"]
    assert event.settlement.ack is not None  # the publisher tells the stage it is stored
    assert closed == ["b1"]
    # No cloud storage: sealed once the manifest is written (on the stage's pool).
    assert wait_until(lambda: store.ids(SEALED) == ["b1"])
    assert wire.receive(1, timeout=1.5) == []  # the deadline passes: no second event


def test_without_cloud_storage_the_stage_records_the_bundle_itself(
    store: BundleStore, wire: Wire, tmp_path: Path, closed: list[str]
) -> None:
    started = start(store, wire, tmp_path, closed, records=True)
    opened = time.time()
    try:
        with wire.sender() as sender:
            # One batch, as they often come: recorded first, then followed.
            sender.send(camera(opened).envelope())
            sender.send(frame(tmp_path, opened).envelope())
            sender.send(dataclasses.replace(camera(opened, ended=True), took=["e1"]).envelope())
            out = wire.receive(2)
    finally:
        assert started.stop_and_join(5)
    assert [e.kind for e in out] == [SNAPSHOT_KIND, BUNDLE_EVENT_KIND]
    bundle = store.bundle("b1")
    assert bundle is not None
    assert [(f.kind, f.seen) for f in bundle.files if f.kind == FRAME] == [(FRAME, True)]
    assert [(c.camera, c.expected, c.taken) for c in bundle.cameras] == [("yard", 1, 1)]


def test_a_frame_held_by_detection_behind_its_bursts_end_is_waited_for(
    store: BundleStore, wire: Wire, tmp_path: Path, closed: list[str]
) -> None:
    started = start(store, wire, tmp_path, closed, records=True)
    opened = time.time() - 1  # the quiet half second after the join is over
    ending = dataclasses.replace(camera(opened, ended=True), took=["e1"])
    try:
        with wire.sender() as sender:
            sender.send(camera(opened).envelope())
            sender.send(ending.envelope())
            assert wire.receive(1, timeout=1.0) == []  # its frame is still to come
            sender.send(frame(tmp_path, opened).envelope())
            out = wire.receive(2)
    finally:
        assert started.stop_and_join(5)
    assert [e.kind for e in out] == [SNAPSHOT_KIND, BUNDLE_EVENT_KIND]
    event = BundleEventMessage.read(out[1])
    assert event.manifest["complete_by"] == "all cameras"
    assert [f["event_id"] for f in event.manifest["frames"]] == ["e1"]


def test_a_camera_that_never_ends_is_failed_at_the_deadline(
    stage: BundleStage, store: BundleStore, wire: Wire
) -> None:
    opened = time.time()
    store.record(joined=[("b1", GROUP, opened, "hall pir", "yard", "Yard", 1)])
    with wire.sender() as sender:
        sender.send(camera(opened).envelope())
        [out] = wire.receive(1, timeout=5)
    event = BundleEventMessage.read(out)
    assert event.manifest["complete_by"] == "deadline"
    assert event.manifest["failed"] == [
        {
            "device_key": "yard",
            "device_label": "Yard",
            "reason": "no answer by the deadline (BUNDLE_DEADLINE)",
        }
    ]
    assert time.time() - opened >= 1.0


def test_a_bundle_cut_short_by_a_stop_is_closed_and_announced_at_the_start(
    store: BundleStore, wire: Wire, tmp_path: Path, closed: list[str]
) -> None:
    opened = time.time() - 60
    snap = frame(tmp_path, opened)
    store.record(
        joined=[("b1", GROUP, opened, "hall pir", "yard", "Yard", 3)],
        files=[
            NewFile("b1", Path(snap.storage_path), FRAME, snap.taken, snap.image, "e1", "yard", 1)
        ],
    )
    # What the daemon does at its start, before any thread runs; then the stage starts.
    assert close_interrupted(store, time.time()) == ["b1"]
    started = start(store, wire, tmp_path, closed)
    try:
        [out] = wire.receive(1, timeout=5)
    finally:
        assert started.stop_and_join(5)
    event = BundleEventMessage.read(out)
    assert event.manifest["complete_by"] == "restart"
    assert [f["event_id"] for f in event.manifest["frames"]] == ["e1"]
    [failed] = event.manifest["failed"]
    assert "stopped" in failed["reason"]
