"""The bundle file: cameras joining and ending, frames through detection, completion,
verified copies, the seal, and what a reopened file still knows."""

from __future__ import annotations

import hashlib
from pathlib import Path

from snapshot_processor.bundle.manifest import best_frame, manifest, person_confidence
from snapshot_processor.bundle.store import (
    BEFORE,
    COLLECTING,
    FRAME,
    MANIFEST,
    SEALED,
    UPLOADING,
    BundleStore,
    NewFile,
)

GROUP = "2026/12/07/20261207T200102Z_hall-pir_abcdef12"
OPENED = 1796673662.0


def join(bundle: str, camera: str, expected: int = 2) -> tuple[str, str, float, str, str, str, int]:
    return (bundle, GROUP, OPENED, "hall pir", camera, camera.title(), expected)


def frame(tmp_path: Path, bundle: str, camera: str, n: int, data: bytes) -> NewFile:
    path = tmp_path / f"{camera}-{n}.jpg"
    path.write_bytes(data)
    return NewFile(bundle, path, FRAME, OPENED + n, data, f"{camera}-{n}", camera, n)


def test_a_bundle_is_ready_once_every_burst_ended_and_every_frame_was_seen(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        store.record(joined=[join("b1", "yard"), join("b1", "door")])
        store.record(files=[frame(tmp_path, "b1", "yard", n, b"y%d" % n) for n in (1, 2)])
        store.record(ended=[("b1", "yard", None, 0, 2)])
        assert not store.ready("b1")  # the door's burst goes on
        store.record(
            files=[frame(tmp_path, "b1", "door", 1, b"d1")],
            ended=[("b1", "door", "snapshot 2 of 2: camera answered 503", 0, 1)],
        )
        assert not store.ready("b1")  # frames not through detection yet
        assert store.saw([("yard-1", [], None), ("yard-2", None, None)]) == {"b1"}
        person = [{"label": "Person", "confidence": 91.5, "person": True, "box": None}]
        assert store.saw([("door-1", person, person_confidence(person))]) == {"b1"}
        assert store.saw([("elsewhere", [], None)]) == set()
        assert store.ready("b1")
        assert store.complete("b1", "all cameras", OPENED + 2, "no answer")
        assert not store.complete("b1", "deadline", OPENED + 30, "no answer")  # once
        assert not store.ready("b1")
        bundle = store.bundle("b1")
        assert bundle is not None
        assert bundle.state == UPLOADING
        assert {c.camera: (c.expected, c.taken, c.failure) for c in bundle.cameras} == {
            "door": (2, 1, "snapshot 2 of 2: camera answered 503"),
            "yard": (2, 2, None),
        }
        [door] = [f for f in bundle.files if f.camera == "door"]
        assert door.sha256 == hashlib.sha256(b"d1").hexdigest()
        assert best_frame(bundle) == door  # the person, though not the first frame
    finally:
        store.close()


def test_a_bundle_waits_for_the_frames_a_burst_took_though_its_end_came_first(
    tmp_path: Path,
) -> None:
    """Detection holds frames, not the burst's end: the end can come before its frames."""
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        store.record(joined=[join("b1", "yard", 2)])
        store.record(ended=[("b1", "yard", None, 0, 2)])
        assert not store.ready("b1")  # no frame recorded yet, two taken
        store.record(files=[frame(tmp_path, "b1", "yard", n, b"y%d" % n) for n in (1, 2)])
        store.saw([("yard-1", [], None)])
        assert not store.ready("b1")
        store.saw([("yard-2", [], None), ("yard-2", [], None)])  # twice counts once
        assert store.ready("b1")
    finally:
        store.close()


def test_a_deadline_marks_the_cameras_still_taking_snapshots_failed(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        store.record(joined=[join("b1", "yard"), join("b1", "door")])
        store.record(ended=[("b1", "yard", None, 0, 0)])
        assert store.complete("b1", "deadline", OPENED + 30, "no answer by the deadline")
        bundle = store.bundle("b1")
        assert bundle is not None
        failed = {c.camera: c.failure for c in bundle.cameras}
        assert failed == {"door": "no answer by the deadline", "yard": None}
        assert best_frame(bundle) is None
    finally:
        store.close()


def test_one_camera_in_a_bundle_twice_expects_both_bursts_but_not_frames_never_asked(
    tmp_path: Path,
) -> None:
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        store.record(joined=[join("b1", "yard", 2), join("b1", "yard", 3)])
        store.record(
            files=[frame(tmp_path, "b1", "yard", n, b"y%d" % n) for n in (1, 2)],
            ended=[("b1", "yard", None, 0, 2)],
        )
        for n in (1, 2):
            store.saw([(f"yard-{n}", [], None)])
        assert not store.ready("b1")
        # The second trigger was covered by a newer one: its three frames were never due.
        store.record(ended=[("b1", "yard", None, 3, 0)])
        assert store.ready("b1")
        bundle = store.bundle("b1")
        assert bundle is not None
        [yard] = bundle.cameras
        assert (yard.expected, yard.taken, yard.failure) == (2, 2, None)
    finally:
        store.close()


def test_a_complete_bundle_takes_no_more_cameras_or_files(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        store.record(joined=[join("b1", "yard", 1)])
        store.complete("b1", "deadline", OPENED + 30, "no answer")
        late = store.record(
            joined=[join("b1", "door", 1)],
            files=[frame(tmp_path, "b1", "yard", 1, b"y1")],
            ended=[("b1", "yard", "snapshot 1 of 1: timed out", 0, 0)],
        )
        assert late == 3
        bundle = store.bundle("b1")
        assert bundle is not None
        # The late end changes nothing of what was announced.
        assert [(c.camera, c.failure) for c in bundle.cameras] == [("yard", "no answer")]
        assert bundle.files == []
        assert store.unsealed_paths() == set()
    finally:
        store.close()


def test_copies_mark_the_first_offsite_and_the_seal_outlives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "bundles.sqlite3"
    store = BundleStore(path)
    yard = frame(tmp_path, "b1", "yard", 1, b"y1")
    still = NewFile("b1", tmp_path / "still.jpg", BEFORE, OPENED, b"s", "yard-1", "yard")
    try:
        store.record(joined=[join("b1", "yard", 1)], files=[yard, still])
        store.record(ended=[("b1", "yard", None, 0, 1)])
        store.saw([("yard-1", [], None)])
        store.complete("b1", "all cameras", OPENED + 1, "-")
        assert store.unsealed_paths() == {str(yard.path), str(still.path)}
        assert store.copied(yard.path, "s3", GROUP, OPENED + 0.4) == ("b1", True)
        assert store.copied(yard.path, "drive", GROUP, OPENED + 0.6) == ("b1", False)
        assert store.copied(tmp_path / "unknown.jpg", "s3", "no/such/group", OPENED) is None
        manifest_file = NewFile("b1", tmp_path / "manifest.json", MANIFEST, OPENED + 2, b"{}")
        assert store.add_manifest(manifest_file)
        assert not store.add_manifest(manifest_file)  # sealing begins once
    finally:
        store.close()
    store = BundleStore(path)
    try:
        bundle = store.bundle("b1")
        assert bundle is not None
        assert bundle.first_offsite == OPENED + 0.4
        [copied] = [f for f in bundle.files if f.kind == FRAME]
        assert set(copied.copies) == {"s3", "drive"}
        assert store.seal("b1", OPENED + 3)
        assert not store.seal("b1", OPENED + 4)
        assert store.ids(SEALED) == ["b1"]
        assert store.unsealed_paths() == set()
    finally:
        store.close()


def test_only_the_newest_sealed_bundles_are_kept(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        for n in range(5):
            bundle = f"b{n}"
            store.record(
                joined=[(bundle, f"{GROUP}{n}", OPENED + n, None, "yard", "Yard", 1)],
                files=[frame(tmp_path, bundle, "yard", n, b"%d" % n)],
            )
            store.complete(bundle, "all cameras", OPENED + n, "-")
            store.seal(bundle, OPENED + n)
        store.record(joined=[("open", GROUP, OPENED, None, "yard", "Yard", 1)])
        assert store.forget_sealed(keep=2, now=OPENED) == 3
        assert sorted(store.ids()) == ["b3", "b4", "open"]
        assert store.ids(COLLECTING) == ["open"]
        assert [b.bundle_id for b in store.recent(10)] == ["b4", "b3", "open"]
    finally:
        store.close()


def test_the_manifest_lists_frames_failures_links_and_the_receipt(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles.sqlite3")
    try:
        store.record(joined=[join("b1", "yard", 2), join("b1", "door", 1)])
        store.record(
            files=[frame(tmp_path, "b1", "yard", n, b"y%d" % n) for n in (1, 2)],
            ended=[("b1", "yard", None, 0, 2), ("b1", "door", "refused: 401", 0, 0)],
        )
        for n in (1, 2):
            store.saw([(f"yard-{n}", [], None)])
        store.complete("b1", "all cameras", OPENED + 1.5, "-")
        store.copied(tmp_path / "yard-1.jpg", "s3", GROUP, OPENED + 0.3)
        bundle = store.bundle("b1")
        assert bundle is not None
        found = manifest(bundle, tmp_path, "http://s3/bucket/bundles/x/", receipt={"at": "now"})
    finally:
        store.close()
    assert found["bundle_id"] == "b1"
    assert found["sensor"] == "hall pir"
    assert found["complete_by"] == "all cameras"
    assert found["opened"] == "2026-12-07T20:01:02.000Z"
    assert [(f["device_key"], f["frame"]) for f in found["frames"]] == [("yard", 1), ("yard", 2)]
    first, second = found["frames"]
    assert first["storage_url"] == "http://s3/bucket/bundles/x/"
    assert second["storage_url"] is None  # not off-site yet
    assert first["sha256"] == hashlib.sha256(b"y1").hexdigest()
    assert first["size"] == 2
    assert found["failed"] == [
        {"device_key": "door", "device_label": "Door", "reason": "refused: 401"}
    ]
    assert found["best"]["event_id"] == "yard-1"  # no person: the first
    assert found["offsite_seconds"] == 0.3
    assert {f["name"] for f in found["receipt"]["files"]} == {"yard-1.jpg", "yard-2.jpg"}
