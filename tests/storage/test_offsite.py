"""The storage stage: each snapshot's files queued for every destination in one commit, the
link set, done marks passed in their place, and a queue that cannot be written never
passed over (the part goes back as a requeue)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylib.chain.settle import DONE_KIND, Settlement, ack_token, done_envelope
from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.storage.offsite import StorageStage
from tests.storage.test_disk_full import disk, fill  # noqa: F401  (the tmpfs fixture)
from tests.support.metrics import sample
from tests.support.wire import Wire
from tests.support.wire import wire as wire_for


class Destination:
    """A destination as the storage stage sees it: a name and a link (no network)."""

    def __init__(self, name: str, link: str | None) -> None:
        self.name = name
        self._link = link

    def link(self, item: UploadItem) -> str | None:
        return None if self._link is None else f"{self._link}/{item.name}"

    def upload(self, item: UploadItem) -> None:
        raise AssertionError("the storage stage never uploads")

    def housekeeping(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


def snapshot(root: Path, n: int, *, annotated: bool = False) -> SnapshotMessage:
    path = root / f"cam_{n}.jpg"
    path.write_bytes(b"\xff\xd8 jpeg \xff\xd9")
    copy = None
    if annotated:
        copy = root / f"cam_{n}.annotated.jpg"
        copy.write_bytes(b"\xff\xd8 boxes \xff\xd9")
    return SnapshotMessage(
        event_id=f"event{n}",
        camera_key="Front Door camera",
        device_label="Front Door",
        image=b"\xff\xd8 jpeg \xff\xd9",
        taken=1_700_000_000.0 + n,
        storage_path=str(path),
        source="fetch",
        settlement=Settlement(ack_token("inproc://acks", tag=n)),
        annotated_path=str(copy) if copy else None,
    )


@pytest.fixture
def wire() -> Iterator[Wire]:
    with wire_for("storage") as ends:
        yield ends


def run_stage(queue: UploadQueue, wire: Wire, woken: list[int]) -> StorageStage:
    stage = StorageStage(
        "storage-test",
        threading.Event(),
        queue=queue,
        destinations={
            "drive": Destination("drive", None),
            "s3": Destination("s3", "http://s3.test/bucket"),
        },
        wake_uploader=lambda: woken.append(1),
        inbox=wire.inbox,
        outbox=wire.outbox,
    )
    stage.start()
    return stage


def test_files_are_queued_for_every_destination_and_the_first_link_is_set(
    tmp_path: Path, wire: Wire
) -> None:
    queue = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=3)
    woken: list[int] = []
    stage = run_stage(queue, wire, woken)
    try:
        with wire.sender() as sender:
            sender.send(snapshot(tmp_path, 1, annotated=True).envelope())
            sender.send(done_envelope(Settlement(ack_token("inproc://acks", tag=9))))
            sender.send(snapshot(tmp_path, 2).envelope())
            out = wire.receive(3)
    finally:
        assert stage.stop_and_join(5)
    try:
        assert [envelope.kind for envelope in out] == ["snapshot", DONE_KIND, "snapshot"]
        first = SnapshotMessage.read(out[0])
        # Drive knows no link yet, so S3's is the one a person gets.
        assert first.storage_url == "http://s3.test/bucket/cam_1.jpg"
        assert first.settlement.ack == ack_token("inproc://acks", tag=1)
        # Two files of snapshot 1 and one of snapshot 2, for each of two destinations.
        assert queue.depth() == 6
        assert queue.holds(str(tmp_path / "cam_1.annotated.jpg"))
        assert woken
    finally:
        queue.close()


def test_a_queue_that_cannot_be_written_gives_the_part_back(
    disk: Path,  # noqa: F811
    wire: Wire,
) -> None:
    queue = UploadQueue(disk / "uploads.sqlite3", max_attempts=3)
    failures = sample("upload_queue_write_failures_total")
    stage = run_stage(queue, wire, [])
    try:
        filler = fill(disk)
        with wire.sender() as sender:
            sender.send(snapshot(disk.parent, 1, annotated=True).envelope())
            [given_back] = wire.receive(1)
            trouble = stage.troubles()
            filler.unlink()
            sender.send(snapshot(disk.parent, 2).envelope())
            [passed] = wire.receive(1)
    finally:
        assert stage.stop_and_join(5)
    try:
        # Not the event: it would name a copy that is never made. Its trigger comes again.
        assert given_back.kind == DONE_KIND
        assert given_back.body["requeue"] is True
        assert given_back.body["ack"] == ack_token("inproc://acks", tag=1)
        # Its files went before it: nothing will ever name them, the trigger makes new ones.
        assert not (disk.parent / "cam_1.jpg").exists()
        assert not (disk.parent / "cam_1.annotated.jpg").exists()
        assert sample("upload_queue_write_failures_total") == failures + 1
        assert len(trouble) == 1
        assert "upload queue" in trouble[0]
        assert SnapshotMessage.read(passed).settlement.ack == ack_token("inproc://acks", tag=2)
        assert queue.depth() == 2
        assert stage.troubles() == []
    finally:
        queue.close()
