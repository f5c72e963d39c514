"""The snapshot stage over real inproc sockets and the camera simulator: a crash and restart,
a stop within its deadline, and camera clients replaced while calls wait for them."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pylib.chain.envelope import Envelope
from pylib.chain.settle import DONE_KIND, Settlement, ack_token
from pylib.chain.sockets import Sender
from pylib.runtime.worker import RestartBudget
from snapshot_processor.camera.errors import CameraError
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.camera.stage import SnapshotStage
from snapshot_processor.config import Device
from snapshot_processor.contract.messages import (
    BUNDLE_CAMERA_KIND,
    SNAPSHOT_KIND,
    TRIGGER_KIND,
    BundleCameraMessage,
    TriggerMessage,
)
from tests.support.crash import CrashesOnce as CrashingWorker
from tests.support.metrics import sample, sample_gauge
from tests.support.wait import wait_until
from tests.support.wire import Wire
from tests.support.wire import wire as wire_for
from tools.camera_simulator import CameraSimulator

PASSWORD = "s3cret pass"
KEY = "Front Door camera"


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def registry(
    camera: CameraSimulator, *, retries: int = 0, timeout: float = 5.0, **breaker: Any
) -> CameraRegistry:
    device = Device.model_validate(
        {
            "LOCATION": "Front Door",
            "TYPE": "camera",
            "VENDOR": "foscam",
            "ADDRESS": f"127.0.0.1:{camera.port}",
            "USER": "admin",
            "PASSWORD": PASSWORD,
        }
    )
    return CameraRegistry([device], timeout=timeout, retries=retries, **breaker)


def trigger(tag: int) -> Envelope:
    return TriggerMessage(
        camera_key=KEY,
        device_label="Front Door",
        timestamp=0,
        sensor_key="hall pir",
        settlement=Settlement(ack_token("inproc://acks", tag=tag)),
    ).envelope()


@pytest.fixture
def wire() -> Iterator[Wire]:
    # Each burst's start and end in its bundle are looked at where a test says so.
    with wire_for("snapshot", aside={BUNDLE_CAMERA_KIND}) as ends:
        yield ends


Start = Callable[..., SnapshotStage]


@pytest.fixture
def start(wire: Wire, tmp_path: Path) -> Iterator[Start]:
    stages: list[SnapshotStage] = []

    def starter(
        cameras: CameraRegistry, cls: type[SnapshotStage] = SnapshotStage, **options: Any
    ) -> SnapshotStage:
        stage = cls(
            f"snapshot-{len(stages)}",
            threading.Event(),
            cameras=cameras,
            root=tmp_path,
            inbox=wire.inbox,
            outbox=wire.outbox,
            **options,
        )
        stage.start()
        stages.append(stage)
        assert stage.ready.wait(5)
        return stage

    yield starter
    for stage in stages:
        assert stage.stop_and_join(10)


class CrashesOnce(CrashingWorker, SnapshotStage):
    """A SnapshotStage whose first run dies once ``crash`` is set."""


def test_stage_restarted_after_a_crash_still_gets_triggers(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    crashes = sample("thread_crashes_total", thread="snapshot-0")
    stage = start(
        registry(camera), cls=CrashesOnce, budget=RestartBudget(restarts=3, window=60, delay=0.05)
    )
    assert isinstance(stage, CrashesOnce)
    sender = Sender(wire.inbox)
    try:
        assert sender.send(trigger(1), block=False)  # waits in the inbox across the crash
        stage.crash.set()
        deadline = time.monotonic() + 5
        while stage.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stage.runs == 2
        assert sender.send(trigger(2), block=False)  # through the socket connected before
        received = wire.receive(2)
    finally:
        sender.close()
    assert sorted(envelope.body["ack"]["tag"] for envelope in received) == [1, 2]
    assert all(envelope.kind == SNAPSHOT_KIND for envelope in received)
    assert sample("thread_crashes_total", thread="snapshot-0") == crashes + 1


def stop_time(stage: SnapshotStage) -> float:
    started = time.monotonic()
    assert stage.stop_and_join(10)
    return time.monotonic() - started


def test_stop_ends_the_pause_between_snapshots(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    left = sample("snapshots_left_at_stop_total", camera=KEY)
    stage = start(registry(camera), per_trigger=3, interval=60.0, stop_timeout=5.0)
    sender = Sender(wire.inbox)
    try:
        sender.send(trigger(1))
        [first] = wire.receive(1)
        elapsed = stop_time(stage)
    finally:
        sender.close()
    assert first.kind == SNAPSHOT_KIND
    assert first.body["parts"] == 3
    assert elapsed < 2.0
    # The two snapshots not taken leave the trigger unacked (no 'done' marks): it comes again.
    assert wire.receive(1, timeout=0.3) == []
    assert sample("snapshots_left_at_stop_total", camera=KEY) == left + 2


def test_stop_cuts_camera_back_off_short(camera: CameraSimulator, wire: Wire, start: Start) -> None:
    camera.mode = "unavailable"  # retried, with pauses of 0.2, 0.4, 0.8 ... s
    stage = start(registry(camera, retries=12), stop_timeout=5.0)
    sender = Sender(wire.inbox)
    try:
        sender.send(trigger(1))
        deadline = time.monotonic() + 5
        while camera.requests < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert camera.requests >= 2
        elapsed = stop_time(stage)
    finally:
        sender.close()
    assert elapsed < 2.0
    # Cut short by the stop, not failed for good: no 'done' mark, so the trigger comes again.
    assert wire.receive(1, timeout=0.3) == []


def test_stop_waits_for_a_fetch_under_way_until_the_deadline(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    camera.latency = 0.5
    stage = start(registry(camera), stop_timeout=5.0)
    sender = Sender(wire.inbox)
    try:
        sender.send(trigger(1))
        deadline = time.monotonic() + 5
        while camera.requests < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop_time(stage)
    finally:
        sender.close()
    [snapshot] = wire.receive(1, timeout=1.0)
    assert snapshot.kind == SNAPSHOT_KIND


def test_stop_gives_up_on_a_fetch_at_the_deadline(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    camera.latency = 2.0
    stage = start(registry(camera), stop_timeout=0.3)
    sender = Sender(wire.inbox)
    try:
        sender.send(trigger(1))
        deadline = time.monotonic() + 5
        while camera.requests < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = stop_time(stage)
    finally:
        sender.close()
    assert elapsed < 1.5
    assert wire.receive(1, timeout=0.3) == []
    time.sleep(2.0)  # the abandoned fetch ends when the camera answers


def test_trigger_without_a_camera_key_still_completes_its_ack(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    start(registry(camera))
    sender = Sender(wire.inbox)
    try:
        sender.send(Envelope(TRIGGER_KIND, {"ack": ack_token("inproc://acks", tag=5)}))
        [done] = wire.receive(1)
    finally:
        sender.close()
    assert done.kind == DONE_KIND
    assert done.body["ack"] == {"reply_to": "inproc://acks", "tag": 5}
    assert done.body["parts"] == 1


def test_new_spec_replaces_the_client_without_failing_waiting_calls(
    camera: CameraSimulator,
) -> None:
    """A trigger with a new password swaps the client: the swap does not wait for the old
    client's call in progress, and a call queued behind it is made with a new client."""
    device = Device.model_validate({"LOCATION": "Front Door", "TYPE": "camera"})
    cameras = CameraRegistry([device], timeout=5.0, retries=0)
    params = f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
    camera.latency = 1.5
    results: dict[str, object] = {}

    def fetch(name: str) -> None:
        try:
            results[name] = cameras.snapshot(KEY, params)
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=fetch, args=("first",), name="first-fetch")
    queued = threading.Thread(target=fetch, args=("queued",), name="queued-fetch")
    try:
        first.start()
        deadline = time.monotonic() + 5
        while camera.requests < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued.start()
        time.sleep(0.2)  # now waiting for the client's lock
        old = cameras.client(KEY, params)
        started = time.monotonic()
        new = cameras.client(KEY, f"admin:other@127.0.0.1:{camera.port}")
        swap = time.monotonic() - started
        first.join(10)
        queued.join(10)
    finally:
        cameras.close()
    assert new is not old
    assert old.closed
    assert swap < 0.5  # not after the 1.5 s call in progress
    assert isinstance(results["first"], bytes)
    assert isinstance(results["queued"], bytes), results["queued"]


# --- one camera's trouble, the others' turns ------------------------------------------------
HUNG = "Hung camera"


def two_cameras(
    hung: CameraSimulator,
    healthy: CameraSimulator,
    *,
    timeout: float,
    retries: int = 0,
    **breaker: Any,
) -> CameraRegistry:
    devices = [
        Device.model_validate(
            {
                "LOCATION": location,
                "TYPE": "camera",
                "VENDOR": "foscam",
                "ADDRESS": f"127.0.0.1:{simulator.port}",
                "USER": "admin",
                "PASSWORD": PASSWORD,
            }
        )
        for location, simulator in (("Hung", hung), ("Front Door", healthy))
    ]
    return CameraRegistry(devices, timeout=timeout, retries=retries, **breaker)


def trigger_for(key: str, tag: int) -> Envelope:
    return TriggerMessage(
        camera_key=key,
        device_label=key,
        timestamp=0,
        settlement=Settlement(ack_token("inproc://acks", tag=tag)),
    ).envelope()


def test_a_hanging_camera_delays_no_other_camera(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    """Triggers for a camera that hangs hold one pool thread and CAMERA_QUEUE places; the
    rest are coalesced (settled at once), and the other camera's triggers flow meanwhile."""
    coalesced = sample("snapshot_triggers_coalesced_total", camera=HUNG)
    hung = CameraSimulator(user="admin", password=PASSWORD, mode="hang").start()
    try:
        # Each attempt times out after 1 s and is retried: the fetch hangs about 10 s.
        cameras = two_cameras(hung, camera, timeout=1.0, retries=8)
        start(cameras, workers=4, waiting=3)
        with wire.sender() as sender:
            for tag in range(8):
                sender.send(trigger_for(HUNG, tag))
            assert wait_until(lambda: hung.requests >= 1, 5)
            # Once the fetch is overdue (1 s), one fetching, three waiting: the newest
            # keeps the last place, the ones it displaced are coalesced (settled).
            done = wire.receive(4, timeout=5)
            started = time.monotonic()
            snapshots = []
            for tag in range(100, 120):  # one after the other, each as soon as it can
                sender.send(trigger_for(KEY, tag))
                snapshots.extend(wire.receive(1, timeout=10))
            elapsed = time.monotonic() - started
            assert wire.receive(1, timeout=0.2) == []
        assert [e.kind for e in done] == [DONE_KIND] * 4
        assert sorted(e.body["ack"]["tag"] for e in done) == [3, 4, 5, 6]
        assert [e.kind for e in snapshots] == [SNAPSHOT_KIND] * 20
        assert [e.body["ack"]["tag"] for e in snapshots] == list(range(100, 120))
        assert {e.body["camera_key"] for e in snapshots} == {KEY}
        assert elapsed < 5.0  # not after the hung camera's 10 s
        assert cameras.breaker(HUNG).failures == 0  # still the first fetch
        assert sample("snapshot_triggers_coalesced_total", camera=HUNG) == coalesced + 4
    finally:
        hung.stop()  # its fetch ends now (connection closed)


def test_each_burst_starts_and_ends_in_its_bundle_with_what_it_took_or_why_not(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    start(registry(camera), per_trigger=2, interval=0.1)
    with wire.sender() as sender:
        sender.send(trigger(1))
        taken = wire.receive(2)
        camera.mode = "error"
        sender.send(trigger(2))
        failed = wire.receive(2)
    assert [e.kind for e in taken] == [SNAPSHOT_KIND] * 2
    assert [e.kind for e in failed] == [DONE_KIND] * 2
    assert wait_until(lambda: len(wire.receive(1, timeout=0.1)) == 0 and len(wire.set_aside) == 4)
    first_join, first_end, second_join, second_end = (
        BundleCameraMessage.read(e) for e in wire.set_aside
    )
    assert (first_join.ended, first_join.expected, first_join.camera_key) == (False, 2, KEY)
    assert first_end.ended
    assert first_end.took == [e.body["event_id"] for e in taken]
    assert first_end.failure is None
    # Both triggers name the sensor, so both bursts are in one bundle, one folder.
    assert second_join.bundle_id == first_join.bundle_id
    assert {Path(e.body["storage_path"]).parent.name for e in taken} == {
        first_join.group.rpartition("/")[2]
    }
    assert second_end.took == []
    assert second_end.failure is not None
    assert second_end.failure.startswith("snapshot 2 of 2: ")


def test_a_failing_camera_opens_its_breaker_and_shows_in_health(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    opened = sample("camera_breaker_opened_total", camera=HUNG)
    refused = sample("snapshot_triggers_refused_total", camera=HUNG)
    hung = CameraSimulator(user="admin", password=PASSWORD, mode="hang").start()
    try:
        cameras = two_cameras(hung, camera, timeout=0.3, breaker_failures=2, breaker_seconds=60.0)
        stage = start(cameras, waiting=3)
        assert stage.troubles() == []
        assert sample_gauge("camera_breaker_state", camera=HUNG) == 0
        with wire.sender() as sender:
            for tag in range(4):  # one fetching, three waiting
                sender.send(trigger_for(HUNG, tag))
            # Two time out, the breaker opens, the two still waiting are settled unasked.
            done = wire.receive(4, timeout=10)
            assert [e.kind for e in done] == [DONE_KIND] * 4
            assert sorted(e.body["ack"]["tag"] for e in done) == [0, 1, 2, 3]
            assert hung.requests == 2
            [trouble] = stage.troubles()
            assert re.fullmatch(
                r"camera 'Hung camera' failing: timed out; retrying in (59|60) s", trouble
            ), trouble
            assert sample_gauge("camera_breaker_state", camera=HUNG) == 2
            assert sample("camera_breaker_opened_total", camera=HUNG) == opened + 1
            # Open: a new trigger is settled at once, the camera not asked.
            sender.send(trigger_for(HUNG, 9))
            [late] = wire.receive(1, timeout=2)
            assert late.kind == DONE_KIND
            assert late.body["ack"]["tag"] == 9
            assert hung.requests == 2
            assert sample("snapshot_triggers_refused_total", camera=HUNG) == refused + 3
            # The other camera is not touched by it.
            sender.send(trigger_for(KEY, 10))
            [snapshot] = wire.receive(1, timeout=5)
            assert snapshot.kind == SNAPSHOT_KIND
    finally:
        hung.stop()


def test_after_the_cool_down_one_trigger_probes_and_closes_the_breaker(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    camera.mode = "unavailable"
    stage = start(registry(camera, breaker_failures=1, breaker_seconds=0.5))
    with wire.sender() as sender:
        sender.send(trigger(1))
        [failed] = wire.receive(1)
        assert failed.kind == DONE_KIND
        [trouble] = stage.troubles()
        assert re.fullmatch(
            r"camera 'Front Door camera' failing: HTTP 503; retrying in [01] s", trouble
        ), trouble
        assert sample_gauge("camera_breaker_state", camera=KEY) == 2
        camera.mode = "ok"
        time.sleep(0.6)  # the cool-down ends
        sender.send(trigger(2))
        [probe] = wire.receive(1)
    assert probe.kind == SNAPSHOT_KIND
    assert probe.body["ack"]["tag"] == 2
    assert stage.troubles() == []
    assert sample_gauge("camera_breaker_state", camera=KEY) == 0


def test_a_burst_that_fits_the_queue_gets_every_snapshot(
    camera: CameraSimulator, wire: Wire, start: Start
) -> None:
    """Coalescing is for a camera in trouble: a burst larger than ``waiting`` to a camera
    that answers (a backlog after a broker outage) gets a snapshot for each trigger."""
    coalesced = sample("snapshot_triggers_coalesced_total", camera=KEY)
    camera.latency = 0.05
    start(registry(camera), waiting=3)
    with wire.sender() as sender:
        for tag in range(11):
            sender.send(trigger(tag))
        received = wire.receive(11)
    assert [e.kind for e in received] == [SNAPSHOT_KIND] * 11
    assert [e.body["ack"]["tag"] for e in received] == list(range(11))  # in order
    assert sample("snapshot_triggers_coalesced_total", camera=KEY) == coalesced


def test_a_breaker_opened_for_one_address_lets_a_new_address_through(
    camera: CameraSimulator,
) -> None:
    """Failures are counted for the address they happened at: a trigger that names
    another address (or password) for the camera is tried, not refused."""
    device = Device.model_validate({"LOCATION": "Front Door", "TYPE": "camera"})
    cameras = CameraRegistry([device], timeout=1.0, retries=0, breaker_failures=1)
    with CameraSimulator(user="admin", password=PASSWORD) as gone:
        closed = f"admin:{PASSWORD}@127.0.0.1:{gone.port}"
    working = f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
    try:
        assert cameras.admits(KEY, closed)
        with pytest.raises(CameraError):
            cameras.snapshot(KEY, closed)
        assert not cameras.admits(KEY, closed)  # open for the address that failed
        assert cameras.admits(KEY, working)
        assert cameras.snapshot(KEY, working).startswith(b"\xff\xd8")
        assert cameras.breaker(KEY).failures == 0
    finally:
        cameras.close()


def test_the_days_bundle_folder_is_made_at_start(
    camera: CameraSimulator, wire: Wire, start: Start, tmp_path: Path
) -> None:
    """The day's first bundle finds its day's folder made (and its name synced): the stage
    makes it when it starts, before any trigger, and the next day's before midnight."""
    today = tmp_path / "bundles" / time.strftime("%Y/%m/%d", time.gmtime())
    assert not today.exists()
    start(registry(camera))
    assert wait_until(today.is_dir, 5)
    with wire.sender() as sender:
        sender.send(trigger(1))
        [snapshot] = wire.receive(1)
    assert Path(snapshot.body["storage_path"]).parent.parent == today


def test_folders_that_cannot_be_made_ahead_are_a_warning_not_a_failure(
    camera: CameraSimulator,
    wire: Wire,
    start: Start,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "bundles").write_bytes(b"not a folder")  # every mkdir under it fails
    caplog.set_level(logging.WARNING, logger="snapshot_processor.camera.stage")
    stage = start(registry(camera))
    assert wait_until(
        lambda: any(
            "could not make the day's bundle folder" in r.getMessage() for r in caplog.records
        ),
        5,
    )
    assert stage.is_alive()
    # The snapshot itself cannot be kept either: its trigger is handed back, as for a full disk.
    with wire.sender() as sender:
        sender.send(trigger(1))
        [mark] = wire.receive(1)
    assert (mark.kind, mark.body.get("requeue")) == (DONE_KIND, True)
