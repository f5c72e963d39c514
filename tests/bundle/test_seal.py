"""The receipt: a complete bundle's manifest written and queued once every file is verified
everywhere, sealed once the manifest is too; copies that come before their file's record,
threads that race, a queueing that failed and a destination added since."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue
from snapshot_processor.bundle.seal import MANIFEST_NAME, SWEEP_GRACE, Sealer
from snapshot_processor.bundle.store import FRAME, MANIFEST, SEALED, UPLOADING, BundleStore, NewFile
from snapshot_processor.storage.offsite import Offsite

GROUP = "2026/12/07/20261207T200102Z_hall-pir_abcdef12"


class Destination:
    """A destination as the sealer sees it: a name and a folder link."""

    links_ahead = True

    def __init__(self, name: str) -> None:
        self.name = name

    def link(self, item: UploadItem) -> str | None:
        return f"https://{self.name}.test/{item.group}/"

    def upload(self, item: UploadItem) -> None:
        raise AssertionError("the sealer never uploads")

    def housekeeping(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BundleStore]:
    opened = BundleStore(tmp_path / "bundles.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[UploadQueue]:
    opened = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=3)
    yield opened
    opened.close()


def offsite(queue: UploadQueue, *names: str) -> Offsite:
    return Offsite(queue, {name: Destination(name) for name in names}, lambda: None)


def bundle_of_two_frames(store: BundleStore, root: Path, *, taken: float) -> list[Path]:
    """A complete bundle, two frames of one camera, as the stages leave it."""
    folder = root / "bundles" / GROUP
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in (1, 2):
        path = folder / f"yard-{n}.jpg"
        path.write_bytes(b"\xff\xd8 frame %d \xff\xd9" % n)
        paths.append(path)
    store.record(
        joined=[("b1", GROUP, taken, "hall pir", "yard", "Yard", 2)],
        files=[
            NewFile("b1", path, FRAME, taken + n, path.read_bytes(), f"e{n}", "yard", n)
            for n, path in enumerate(paths, start=1)
        ],
        ended=[("b1", "yard", None, 0, 2)],
    )
    for n in (1, 2):
        store.saw([(f"e{n}", [], None)])
    assert store.complete("b1", "all cameras", taken + 2, "-")
    return paths


def copy(sealer: Sealer, path: Path, to: str) -> None:
    sealer.uploaded(to, UploadItem(path, path.name, "yard", 0.0, GROUP))


def test_the_manifest_goes_last_and_its_copy_seals_the_bundle(
    store: BundleStore, queue: UploadQueue, tmp_path: Path
) -> None:
    sealer = Sealer(store, tmp_path, offsite(queue, "s3", "drive"))
    frames = bundle_of_two_frames(store, tmp_path, taken=time.time())
    manifest = tmp_path / "bundles" / GROUP / MANIFEST_NAME
    copy(sealer, frames[0], "s3")
    copy(sealer, frames[0], "drive")
    copy(sealer, frames[1], "s3")
    assert not manifest.exists()  # one copy still missing
    copy(sealer, frames[1], "drive")
    written = json.loads(manifest.read_text())
    assert written["receipt"]["destinations"] == ["drive", "s3"]
    assert {f["name"] for f in written["receipt"]["files"]} == {"yard-1.jpg", "yard-2.jpg"}
    assert all(set(f["verified"]) == {"drive", "s3"} for f in written["receipt"]["files"])
    queued = queue.due(2e9, 10)
    assert sorted(u.destination for u in queued) == ["drive", "s3"]
    assert {u.item.path for u in queued} == {manifest}
    copy(sealer, manifest, "s3")
    assert store.ids(UPLOADING) == ["b1"]
    copy(sealer, manifest, "drive")
    assert store.ids(SEALED) == ["b1"]


def test_a_copy_that_comes_before_its_files_record_still_counts(
    store: BundleStore, tmp_path: Path, queue: UploadQueue
) -> None:
    """The storage stage queues a file before it records it: an upload can end between."""
    sealer = Sealer(store, tmp_path, offsite(queue, "s3"))
    store.record(joined=[("b1", GROUP, time.time(), None, "yard", "Yard", 1)])
    path = tmp_path / "early.jpg"
    path.write_bytes(b"early")
    copy(sealer, path, "s3")
    store.record(
        files=[NewFile("b1", path, FRAME, time.time(), b"early", "e1", "yard", 1)],
        ended=[("b1", "yard", None, 0, 1)],
    )
    store.saw([("e1", [], None)])
    store.complete("b1", "all cameras", time.time(), "-")
    sealer.check("b1")
    bundle = store.bundle("b1")
    assert bundle is not None
    assert [f.kind for f in bundle.files if f.copies] == [FRAME]
    assert any(f.kind == MANIFEST for f in bundle.files)


def test_threads_that_race_write_one_manifest(
    store: BundleStore, queue: UploadQueue, tmp_path: Path
) -> None:
    sealer = Sealer(store, tmp_path, offsite(queue, "s3"))
    frames = bundle_of_two_frames(store, tmp_path, taken=time.time())
    for path in frames:
        store.copied(path, "s3", GROUP, time.time())
    start = threading.Barrier(8)

    def seal() -> None:
        start.wait()
        sealer.check("b1")

    threads = [threading.Thread(target=seal) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bundle = store.bundle("b1")
    assert bundle is not None
    [manifest] = [f for f in bundle.files if f.kind == MANIFEST]
    assert len(queue.due(2e9, 10)) == 1
    # What was recorded is what is on disk, and so what goes off-site.
    assert manifest.size == Path(manifest.path).stat().st_size


def test_a_manifest_whose_queueing_failed_is_queued_by_the_next_sweep(
    store: BundleStore, queue: UploadQueue, tmp_path: Path
) -> None:
    sealer = Sealer(store, tmp_path, offsite(queue, "s3"))
    long_ago = time.time() - 2 * SWEEP_GRACE
    frames = bundle_of_two_frames(store, tmp_path, taken=long_ago)
    for path in frames:
        store.copied(path, "s3", GROUP, time.time())
    manifest = tmp_path / "bundles" / GROUP / MANIFEST_NAME
    manifest.write_bytes(b"{}")
    # Recorded, then the queue could not be written: nothing would ever upload it.
    store.add_manifest(NewFile("b1", manifest, MANIFEST, long_ago, b"{}"))
    assert queue.depth() == 0
    sealer.sweep()
    [due] = queue.due(2e9, 10)
    assert due.item.path == manifest
    assert due.item.group == GROUP
    sealer.sweep()  # queued already: not twice
    assert queue.depth() == 1


def test_a_destination_added_since_gets_every_file_at_the_start(
    store: BundleStore, queue: UploadQueue, tmp_path: Path
) -> None:
    frames = bundle_of_two_frames(store, tmp_path, taken=time.time())
    for path in frames:
        store.copied(path, "s3", GROUP, time.time())
    queue.add([("s3", UploadItem(tmp_path / "other.jpg", "other.jpg", "yard", 0.0))])
    sealer = Sealer(store, tmp_path, offsite(queue, "s3", "drive"))
    sealer.resume()
    due = queue.due(2e9, 10)
    assert sorted((u.destination, u.item.name) for u in due) == [
        ("drive", "yard-1.jpg"),
        ("drive", "yard-2.jpg"),
        ("s3", "other.jpg"),
    ]


def test_without_cloud_storage_a_complete_bundle_is_sealed_with_its_manifest_written(
    store: BundleStore, tmp_path: Path
) -> None:
    sealer = Sealer(store, tmp_path, None)
    bundle_of_two_frames(store, tmp_path, taken=time.time())
    sealer.check("b1")
    assert store.ids(SEALED) == ["b1"]
    written = json.loads((tmp_path / "bundles" / GROUP / MANIFEST_NAME).read_text())
    assert written["receipt"]["destinations"] == []
    assert written["storage_url"] is None
