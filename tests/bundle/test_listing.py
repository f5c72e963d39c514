"""Recent bundles as the API and the page list them, from a real bundle file and upload
queue: each state, why one is not sealed (a parked upload named), time to off-site."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue
from snapshot_processor.bundle.listing import bundle_views
from snapshot_processor.bundle.manifest import person_confidence
from snapshot_processor.bundle.store import FRAME, MANIFEST, BundleStore, NewFile

OPENED = 1796673662.0  # 2026-12-07T20:01:02Z
SENSOR = "hall pir"
PASSWORD = "hunter22-secret"
PERSON = [{"label": "Person", "confidence": 93.0, "person": True, "box": None}]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(root: Path) -> Iterator[BundleStore]:
    opened = BundleStore(root / "bundles.sqlite3")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def queue(root: Path) -> Iterator[UploadQueue]:
    opened = UploadQueue(root / "uploads.sqlite3", max_attempts=3)
    try:
        yield opened
    finally:
        opened.close()


def group(name: str) -> str:
    return f"2026/12/07/{name}"


def frame(root: Path, bundle: str, camera: str, n: int, opened: float) -> NewFile:
    path = root / "bundles" / group(bundle) / f"{camera}-{n}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"{bundle} {camera} {n}".encode()
    path.write_bytes(data)
    return NewFile(bundle, path, FRAME, opened + n, data, f"{bundle}-{camera}-{n}", camera, n)


def sealed_bundle(store: BundleStore, root: Path, bundle: str, opened: float, *, to: str) -> None:
    """Two cameras, one of them failed; every file copied to ``to`` (none: kept here)."""
    store.record(
        joined=[
            (bundle, group(bundle), opened, SENSOR, "yard", "Yard", 2),
            (bundle, group(bundle), opened, SENSOR, "door", "Door", 1),
        ],
        files=[frame(root, bundle, "yard", n, opened) for n in (1, 2)],
        ended=[
            (bundle, "yard", None, 0, 2),
            (
                bundle,
                "door",
                f"snapshot 1 of 1: rtsp://admin:{PASSWORD}@10.0.0.5:554/ refused",
                0,
                0,
            ),
        ],
    )
    store.saw([(f"{bundle}-yard-1", [], None)])
    store.saw([(f"{bundle}-yard-2", PERSON, person_confidence(PERSON))])
    store.complete(bundle, "all cameras", opened + 2, "no answer")
    manifest = root / "bundles" / group(bundle) / "manifest.json"
    manifest.write_bytes(b"{}")
    store.add_manifest(NewFile(bundle, manifest, MANIFEST, opened + 3, b"{}"))
    if to:
        found = store.bundle(bundle)
        assert found is not None
        for n, file in enumerate(found.files):
            store.copied(file.path, to, group(bundle), opened + 0.4 + n)
    assert store.seal(bundle, opened + 5)


def test_each_state_with_why_it_is_not_sealed_and_a_parked_upload_named(
    store: BundleStore, queue: UploadQueue, root: Path
) -> None:
    sealed_bundle(store, root, "b-sealed", OPENED, to="s3")
    # Uploading: one frame verified off-site, one parked by S3, one still queued.
    later = OPENED + 60
    files = [frame(root, "b-up", "yard", n, later) for n in (1, 2, 3)]
    store.record(
        joined=[("b-up", group("b-up"), later, SENSOR, "yard", "Yard", 3)],
        files=files,
        ended=[("b-up", "yard", None, 0, 3)],
    )
    for n in (1, 2, 3):
        store.saw([(f"b-up-yard-{n}", [], None)])
    store.complete("b-up", "all cameras", later + 3, "no answer")
    queue.add([("s3", UploadItem(f.path, f.path.name, "yard", f.taken, "b-up")) for f in files])
    store.copied(files[0].path, "s3", group("b-up"), later + 0.8)
    [done] = [u for u in queue.due(time.time(), 10) if u.item.path == files[0].path]
    queue.done(done.id)
    [refused] = [u for u in queue.due(time.time(), 10) if u.item.path == files[1].path]
    assert queue.park(refused.id, "403 AccessDenied")
    # Collecting: no sensor named, a burst still under way.
    store.record(joined=[("b-new", group("b-new"), OPENED + 120, None, "gate", "Gate", 2)])

    asked: list[set[str]] = []

    def parked(paths: Collection[str]) -> dict[str, str]:
        asked.append(set(paths))
        return queue.parked_reasons(paths)

    newest, uploading, sealed = bundle_views(store.recent(10), ["s3"], parked, root)

    assert newest == {
        "bundle_id": "b-new",
        "sensor": None,
        "opened": "2026-12-07T20:03:02.000Z",
        "state": "collecting",
        "why_not_sealed": "taking snapshots: gate",
        "complete_by": None,
        "cameras": [
            {"key": "gate", "label": "Gate", "frames_asked": 2, "frames_taken": 0, "failure": None}
        ],
        "frames": 0,
        "failed": 0,
        "offsite_seconds": None,
        "sealed": None,
        "storage_path": str(root / "bundles" / group("b-new")),
        "best_event_id": None,
    }
    assert uploading["state"] == "uploading"
    # A parked file is never copied: the seal waits on it for good, and says so.
    assert uploading["why_not_sealed"] == (
        "2 upload(s) to s3 still to verify; parked: s3: 403 AccessDenied"
    )
    assert (uploading["frames"], uploading["failed"]) == (3, 0)
    assert uploading["offsite_seconds"] == 0.8
    assert uploading["best_event_id"] == "b-up-yard-1"  # no person: the first taken

    assert sealed["state"] == "sealed"
    assert sealed["why_not_sealed"] is None
    assert sealed["opened"] == "2026-12-07T20:01:02.000Z"
    assert sealed["sealed"] == "2026-12-07T20:01:07.000Z"
    assert sealed["complete_by"] == "all cameras"
    assert sealed["offsite_seconds"] == 0.4
    assert (sealed["frames"], sealed["failed"]) == (2, 1)
    assert sealed["best_event_id"] == "b-sealed-yard-2"  # the person
    assert sealed["storage_path"] == str(root / "bundles" / group("b-sealed"))
    yard, door = sorted(sealed["cameras"], key=lambda c: c["key"] != "yard")
    assert (yard["frames_asked"], yard["frames_taken"], yard["failure"]) == (2, 2, None)
    # The camera's own words, without the password its address carried.
    assert door["failure"] == "snapshot 1 of 1: rtsp://admin:***@10.0.0.5:554/ refused"
    assert PASSWORD not in repr([newest, uploading, sealed])

    # One question to the queue for everything shown, and none about a sealed bundle.
    [paths] = asked
    assert paths == {str(f.path) for f in files}


def test_without_cloud_storage_a_bundle_is_sealed_with_nothing_off_site(
    store: BundleStore, root: Path
) -> None:
    sealed_bundle(store, root, "b-here", OPENED, to="")
    store.record(
        joined=[("b-next", group("b-next"), OPENED + 9, SENSOR, "yard", "Yard", 1)],
        files=[frame(root, "b-next", "yard", 1, OPENED + 9)],
        ended=[("b-next", "yard", None, 0, 1)],
    )
    store.saw([("b-next-yard-1", [], None)])
    store.complete("b-next", "deadline", OPENED + 39, "no answer")

    complete, sealed = bundle_views(store.recent(10), [], None, root)

    assert (complete["state"], complete["why_not_sealed"]) == ("uploading", "writing its manifest")
    assert complete["complete_by"] == "deadline"
    assert (sealed["state"], sealed["why_not_sealed"]) == ("sealed", None)
    assert sealed["offsite_seconds"] is None
    assert bundle_views(store.recent(1), [], None, root) == [complete]
    assert bundle_views([], ["s3"], None, root) == []
