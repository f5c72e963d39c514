"""The storage stage: each bundle's cameras and files recorded, each snapshot's files queued
for every destination in one commit (a bundle's small first copy ahead of everything), the
link set, done marks and bundle cameras passed in their place, and a batch that cannot be
kept never passed over (the part goes back as a requeue)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pylib.chain.settle import DONE_KIND, Settlement, ack_token, done_envelope
from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue
from snapshot_processor.bundle.store import FRAME, PREVIEW, BundleStore
from snapshot_processor.contract.messages import (
    BUNDLE_CAMERA_KIND,
    BundleCameraMessage,
    SnapshotMessage,
)
from snapshot_processor.storage.offsite import AHEAD, FIRST, Offsite, StorageStage
from tests.storage.test_disk_full import disk, fill  # noqa: F401  (the tmpfs fixture)
from tests.support.metrics import sample
from tests.support.wire import Wire
from tests.support.wire import wire as wire_for

GROUP = "2026/12/07/20261207T200102Z_hall-pir_abcdef12"


class Destination:
    """A destination as the storage stage sees it: a name and links (no network)."""

    def __init__(self, name: str, link: str | None, *, ahead: bool) -> None:
        self.name = name
        self.links_ahead = ahead
        self._link = link

    def link(self, item: UploadItem) -> str | None:
        if self._link is None:
            return None
        return f"{self._link}/{item.group}/" if item.group else f"{self._link}/{item.name}"

    def upload(self, item: UploadItem) -> None:
        raise AssertionError("the storage stage never uploads")

    def housekeeping(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


def busy_jpeg() -> bytes:
    """A JPEG well over 64 KB: noise compresses badly."""
    image = Image.effect_noise((1280, 720), 80).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def snapshot(
    root: Path, n: int, *, image: bytes = b"\xff\xd8 jpeg \xff\xd9", bundle: bool = False
) -> SnapshotMessage:
    path = root / f"cam_{n}.jpg"
    path.write_bytes(image)
    return SnapshotMessage(
        event_id=f"event{n}",
        camera_key="Front Door camera",
        device_label="Front Door",
        image=image,
        taken=1_700_000_000.0 + n,
        storage_path=str(path),
        source="fetch",
        settlement=Settlement(ack_token("inproc://acks", tag=n)),
        bundle_id="b1" if bundle else None,
        bundle_group=GROUP if bundle else None,
        frame=n if bundle else None,
    )


def camera(*, ended: bool = False, took: list[str] | None = None) -> BundleCameraMessage:
    return BundleCameraMessage(
        "b1", GROUP, 1_700_000_000.0, "hall pir", "Front Door camera", "Front Door", 2,
        ended=ended, took=took or [],
    )  # fmt: skip


@pytest.fixture
def wire() -> Iterator[Wire]:
    with wire_for("storage") as ends:
        yield ends


def run_stage(store: BundleStore, queue: UploadQueue, wire: Wire, woken: list[int]) -> StorageStage:
    destinations = {
        "drive": Destination("drive", None, ahead=False),
        "s3": Destination("s3", "http://s3.test/bucket", ahead=True),
    }
    offsite = Offsite(queue, destinations, lambda: woken.append(1))
    stage = StorageStage(
        "storage-test",
        threading.Event(),
        store=store,
        offsite=offsite,
        inbox=wire.inbox,
        outbox=wire.outbox,
    )
    stage.start()
    return stage


def test_a_bundles_files_are_recorded_and_queued_its_small_first_copy_ahead(
    tmp_path: Path, wire: Wire
) -> None:
    queue = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=3)
    store = BundleStore(tmp_path / "bundles.sqlite3")
    woken: list[int] = []
    stage = run_stage(store, queue, wire, woken)
    big = busy_jpeg()
    try:
        with wire.sender() as sender:
            sender.send(camera().envelope())
            sender.send(snapshot(tmp_path, 1, image=big, bundle=True).envelope())
            sender.send(done_envelope(Settlement(ack_token("inproc://acks", tag=9))))
            sender.send(snapshot(tmp_path, 2, bundle=True).envelope())
            sender.send(camera(ended=True, took=["event1", "event2"]).envelope())
            sender.send(snapshot(tmp_path, 3).envelope())  # of no bundle: an FTP upload
            out = wire.receive(6)
    finally:
        assert stage.stop_and_join(5)
    try:
        kinds = [envelope.kind for envelope in out]
        assert kinds == [
            BUNDLE_CAMERA_KIND,
            "snapshot",
            DONE_KIND,
            "snapshot",
            BUNDLE_CAMERA_KIND,
            "snapshot",
        ]
        first = SnapshotMessage.read(out[1])
        # Drive knows no bundle folder yet; S3 knows it at once: every frame links it.
        assert first.storage_url == f"http://s3.test/bucket/{GROUP}/"
        assert SnapshotMessage.read(out[3]).storage_url == first.storage_url
        assert SnapshotMessage.read(out[5]).storage_url == "http://s3.test/bucket/cam_3.jpg"
        # The small copy of the first frame: beside it, about 50 KB, first in the queue.
        small = tmp_path / "cam_1.small.jpg"
        assert len(big) > 64 * 1024 > small.stat().st_size
        due = queue.due(2e9, 100)
        # The small copy goes ahead of the frame, which goes ahead of the rest.
        assert [(u.item.name, u.item.priority) for u in due[:4]] == [
            ("cam_1.small.jpg", AHEAD),
            ("cam_1.small.jpg", AHEAD),
            ("cam_1.jpg", FIRST),
            ("cam_1.jpg", FIRST),
        ]
        assert {u.item.group for u in due if u.item.name != "cam_3.jpg"} == {GROUP}
        assert queue.depth() == 8  # small, frame 1, frame 2, the upload: for two each
        assert woken
        bundle = store.bundle("b1")
        assert bundle is not None
        assert sorted((f.kind, Path(f.path).name) for f in bundle.files) == [
            (FRAME, "cam_1.jpg"),
            (FRAME, "cam_2.jpg"),
            (PREVIEW, "cam_1.small.jpg"),
        ]
        [part] = bundle.cameras
        assert (part.expected, part.taken, part.bursts) == (2, 2, 0)
    finally:
        queue.close()
        store.close()


def test_a_queue_that_cannot_be_written_gives_the_part_back(
    disk: Path,  # noqa: F811
    wire: Wire,
) -> None:
    queue = UploadQueue(disk / "uploads.sqlite3", max_attempts=3)
    store = BundleStore(disk.parent / "bundles.sqlite3")
    failures = sample("upload_queue_write_failures_total")
    stage = run_stage(store, queue, wire, [])
    try:
        filler = fill(disk)
        with wire.sender() as sender:
            sender.send(snapshot(disk.parent, 1).envelope())
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
        # Its file went before it: nothing will ever name it, the trigger makes a new one.
        assert not (disk.parent / "cam_1.jpg").exists()
        assert sample("upload_queue_write_failures_total") == failures + 1
        assert len(trouble) == 1
        assert "upload queue" in trouble[0]
        assert SnapshotMessage.read(passed).settlement.ack == ack_token("inproc://acks", tag=2)
        assert queue.depth() == 2
        assert stage.troubles() == []
    finally:
        queue.close()
        store.close()


def test_a_bundle_learns_of_its_camera_though_its_frame_was_handed_back(
    disk: Path,  # noqa: F811
    wire: Wire,
) -> None:
    queue = UploadQueue(disk / "uploads.sqlite3", max_attempts=3)
    store = BundleStore(disk.parent / "bundles.sqlite3")  # on a disk with room
    stage = run_stage(store, queue, wire, [])
    try:
        filler = fill(disk)
        with wire.sender() as sender:
            sender.send(camera().envelope())
            sender.send(snapshot(disk.parent, 1, bundle=True).envelope())
            sender.send(camera(ended=True, took=["event1"]).envelope())
            out = wire.receive(3)
        filler.unlink()
    finally:
        assert stage.stop_and_join(5)
    try:
        assert [e.kind for e in out] == [BUNDLE_CAMERA_KIND, DONE_KIND, BUNDLE_CAMERA_KIND]
        assert out[1].body["requeue"] is True
        bundle = store.bundle("b1")
        assert bundle is not None
        assert bundle.files == []
        [part] = bundle.cameras
        assert part.bursts == 0
        assert part.failure == "1 frame(s) not kept (the upload queue could not be written)"
        # It waits for no frame that will never come: its trigger makes new ones.
        assert store.ready("b1")
    finally:
        queue.close()
        store.close()
