"""Local retention: by age and size, oldest first, never a file still to upload, never
through a link, with an alarm instead of deletion under pressure."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pylib.amqp.outbox import Outbox
from pylib.chain.attachment import Attachment
from pylib.runtime.daemon import Daemon
from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue
from snapshot_processor import config
from snapshot_processor.bundle.feature import open_store
from snapshot_processor.bundle.store import FRAME, BundleStore, NewFile
from snapshot_processor.storage.feature import build as build_storage
from snapshot_processor.storage.retention import Retention, RetentionPolicy, sweep
from tests.storage.test_disk_full import disk  # noqa: F401  (the tmpfs fixture)
from tests.storage.test_s3 import aws_env  # noqa: F401  (fake credentials, no shared files)
from tests.support.fakes.s3 import FailingS3
from tests.support.metrics import sample, sample_gauge
from tests.support.wait import wait_until

DAY = 86_400.0
NOW = time.time()


def snapshot(root: Path, name: str, age: float, size: int = 1000, camera: str = "cam") -> Path:
    """A snapshot file ``age`` seconds old in its camera's day folder."""
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW - age))
    path = root / "snapshots" / camera / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age, NOW - age))
    return path


@contextmanager
def bundle_file(settings: config.Settings) -> Iterator[BundleStore]:
    store = BundleStore(settings.bundles_path)
    try:
        yield store
    finally:
        store.close()


def bundled(root: Path, group: str, name: str, age: float) -> Path:
    """A file of the bundle ``group``, ``age`` seconds old."""
    path = root / "bundles" / group / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 1000)
    os.utime(path, (NOW - age, NOW - age))
    return path


def retention(root: Path, policy: RetentionPolicy, pending: Collection[str] = ()) -> Retention:
    return Retention(root, policy, threading.Event(), pending=lambda: pending, clock=lambda: NOW)


def test_age_cap_removes_old_files_but_not_those_still_to_upload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="snapshot_processor.storage.retention")
    old = snapshot(tmp_path, "old.jpg", 40 * DAY)
    old_annotated = snapshot(tmp_path, "old.annotated.jpg", 40 * DAY)
    old_pending = snapshot(tmp_path, "old-pending.jpg", 50 * DAY)
    recent = snapshot(tmp_path, "recent.jpg", 2 * DAY)
    quarantined = tmp_path / "quarantine" / "20260101_bad.jpg"
    quarantined.parent.mkdir()
    quarantined.write_bytes(b"not a jpeg")
    os.utime(quarantined, (NOW - 31 * DAY, NOW - 31 * DAY))
    removed_before = sample("retention_removed_files_total", reason="age")

    worker = retention(tmp_path, RetentionPolicy(30 * DAY, None), {str(old_pending)})
    result = worker.run_once()

    assert result is not None
    assert not old.exists()
    assert not old_annotated.exists()
    assert not quarantined.exists()
    assert old_pending.exists()
    assert recent.exists()
    assert result.removed == 3
    assert sample("retention_removed_files_total", reason="age") == removed_before + 3
    oldest = time.strftime("%Y-%m-%d", time.gmtime(NOW - 40 * DAY))
    assert f"retention: removed 3 file(s), 2.0 KB (3 by age), oldest from {oldest}" in caplog.text


def test_size_cap_removes_the_oldest_first_skipping_pending_ones(tmp_path: Path) -> None:
    files = [snapshot(tmp_path, f"s{n}.jpg", (20 - n) * DAY) for n in range(10)]  # s0 oldest
    pending = {str(files[0]), str(files[2])}

    result = sweep(tmp_path, RetentionPolicy(None, 4500), pending, NOW)

    # 10 000 bytes, cap 4 500: six must go, the oldest that are not pending.
    kept = [f.name for f in files if f.exists()]
    assert kept == ["s0.jpg", "s2.jpg", "s8.jpg", "s9.jpg"]
    assert result.removed == 6
    assert result.kept_bytes == 4000
    assert result.alarm is None


def test_size_pressure_with_only_pending_files_left_raises_an_alarm_not_a_deletion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="snapshot_processor.storage.retention")
    files = [snapshot(tmp_path, f"p{n}.jpg", (5 - n) * DAY) for n in range(4)]
    pending: set[str] = {str(f) for f in files}
    alarms = sample("retention_alarms_total")
    worker = Retention(
        tmp_path,
        RetentionPolicy(None, 1500),
        threading.Event(),
        pending=lambda: set(pending),
        clock=lambda: NOW,
    )

    worker.run_once()
    worker.run_once()

    assert all(f.exists() for f in files)
    alarm_lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(alarm_lines) == 1  # once per change, not once per sweep
    assert "over RETENTION_MAX_BYTES" in alarm_lines[0].getMessage()
    assert sample("retention_alarms_total") == alarms + 1
    assert sample_gauge("retention_alarm") == 1
    (trouble,) = worker.troubles()
    assert "4.0 KB of it not yet uploaded" in trouble

    pending.clear()  # all uploaded now
    worker.run_once()
    assert [f.exists() for f in files] == [False, False, False, True]
    assert worker.troubles() == []
    assert sample_gauge("retention_alarm") == 0
    assert "retention alarm cleared" in caplog.text


def test_young_files_are_never_removed(tmp_path: Path) -> None:
    fresh = [snapshot(tmp_path, f"f{n}.jpg", 60.0 * n) for n in range(3)]
    result = sweep(tmp_path, RetentionPolicy(1.0, 1), (), NOW)
    assert all(f.exists() for f in fresh)
    assert result.removed == 0
    assert result.alarm is None  # nothing pending: the grace period passes on its own


def test_links_are_never_followed_nor_the_data_root_left(tmp_path: Path) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.jpg"
    precious.write_bytes(b"p" * 5000)
    os.utime(precious, (NOW - 90 * DAY, NOW - 90 * DAY))
    day = snapshot(root, "old.jpg", 90 * DAY).parent
    (day / "link.jpg").symlink_to(precious)
    (root / "snapshots" / "linked-camera").symlink_to(outside, target_is_directory=True)
    (root / "quarantine").symlink_to(outside, target_is_directory=True)

    result = sweep(root, RetentionPolicy(DAY, 10), (), NOW)

    assert precious.read_bytes() == b"p" * 5000
    assert (day / "link.jpg").is_symlink()
    assert (root / "snapshots" / "linked-camera").is_symlink()
    assert not (day / "old.jpg").exists()
    assert result.removed == 1
    assert any("not a folder" in failure for failure in result.failures)


def test_empty_day_folders_of_past_days_are_removed(tmp_path: Path) -> None:
    old = snapshot(tmp_path, "old.jpg", 10 * DAY)
    today = snapshot(tmp_path, "today.jpg", 0.0)
    today.unlink()  # an empty folder of today: a snapshot may be written into it any moment
    sweep(tmp_path, RetentionPolicy(DAY, None), (), NOW)
    assert not old.parent.exists()
    assert today.parent.is_dir()
    assert (tmp_path / "snapshots" / "cam").is_dir()


def test_the_worker_sweeps_at_start_and_keeps_what_the_queue_holds(tmp_path: Path) -> None:
    queued = snapshot(tmp_path, "queued.jpg", 40 * DAY)
    parked = snapshot(tmp_path, "parked.jpg", 40 * DAY)
    done = snapshot(tmp_path, "done.jpg", 40 * DAY)
    queue = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=3)
    try:
        queue.add(
            [("drive", UploadItem(p, p.name, "cam", NOW - 40 * DAY)) for p in (queued, parked)]
        )
        queue.park(queue.due(time.time(), 10)[1].id, "refused")
        worker = Retention(
            tmp_path,
            RetentionPolicy(30 * DAY, None),
            threading.Event(),
            pending=queue.pending_paths,
            interval=3600,
        )
        worker.start()
        try:
            assert wait_until(lambda: not done.exists())
        finally:
            assert worker.stop_and_join(5)
        assert queued.exists()
        assert parked.exists()
    finally:
        queue.close()


def test_an_unreadable_queue_means_nothing_is_removed(tmp_path: Path) -> None:
    old = snapshot(tmp_path, "old.jpg", 40 * DAY)

    def broken() -> set[str]:
        raise OSError("disk I/O error")

    worker = Retention(tmp_path, RetentionPolicy(DAY, None), threading.Event(), pending=broken)
    assert worker.run_once() is None
    assert old.exists()
    assert worker.troubles() == [
        "retention: sweep skipped, nothing removed: OSError: disk I/O error"
    ]


def test_a_policy_from_the_settings_treats_zero_as_no_bound() -> None:
    assert RetentionPolicy.of(30, 0) == RetentionPolicy(30 * DAY, None)
    assert RetentionPolicy.of(0, 5000) == RetentionPolicy(None, 5000)


def test_a_disk_under_pressure_loses_its_oldest_safe_files_then_alarms(
    disk: Path,  # noqa: F811  (a small tmpfs of its own: only this test changes its free space)
) -> None:
    files = [snapshot(disk, f"d{n}.jpg", (10 - n) * DAY, size=100_000) for n in range(6)]
    pending = {str(files[0]), str(files[1])}
    free = shutil.disk_usage(disk).free
    # 250 kB short of the bound: the three oldest files not waiting for upload make room.
    policy = RetentionPolicy(None, None, min_free=free + 250_000)
    result = sweep(disk, policy, pending, NOW)
    assert [f.name for f in files if f.exists()] == ["d0.jpg", "d1.jpg", "d5.jpg"]
    assert result.by_reason == {"disk": 3}
    assert result.alarm is None  # the room was made
    # Still short of room, with only files to upload left: an alarm, nothing removed.
    files[5].unlink()
    squeezed = RetentionPolicy(None, None, min_free=shutil.disk_usage(disk).free + 10**9)
    result = sweep(disk, squeezed, pending, NOW)
    assert files[0].exists()
    assert files[1].exists()
    assert result.removed == 0
    assert result.alarm is not None
    assert "RETENTION_MIN_FREE_BYTES" in result.alarm
    assert "not yet uploaded" in result.alarm


def test_the_daemons_retention_keeps_the_snapshots_its_outbox_still_names(
    tmp_path: Path,
) -> None:
    """An event waiting in the outbox (broker away for weeks) names its snapshot instead of
    holding it: that file outlives the age cap until the event is published."""
    settings = config.load(
        env={"SNAPSHOTS_ROOT_DIR": str(tmp_path), "RETENTION_MIN_FREE_BYTES": "0"}
    )
    named = snapshot(tmp_path, "named.jpg", 40 * DAY)
    parked = snapshot(tmp_path, "parked.jpg", 40 * DAY)
    old = snapshot(tmp_path, "old.jpg", 40 * DAY)
    with Outbox(settings.outbox_path) as box:
        for path in (named, parked):
            body = b"<" + path.read_bytes() + b">"
            box.append("events", "k", body, attachment=Attachment(str(path), 1, 1000))
        assert box.park(box.peek()[1].id, "404 NOT_FOUND")

    with bundle_file(settings) as bundles:
        worker = build_storage(settings, Daemon("test", shutdown_timeout=5), bundles).retention
        assert worker.run_once() is not None

    assert named.exists()
    assert parked.exists()
    assert not old.exists()


def test_the_daemons_retention_keeps_the_snapshots_its_upload_queue_still_holds(
    tmp_path: Path,
    aws_env: None,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 refusing for weeks (credentials revoked): a snapshot still queued for upload
    outlives the age cap, an equally old one that is not queued does not."""
    queued = snapshot(tmp_path, "queued.jpg", 40 * DAY)
    old = snapshot(tmp_path, "old.jpg", 40 * DAY)
    with FailingS3(403, "AccessDenied") as s3:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.base_url)
        settings = config.load(
            env={
                "SNAPSHOTS_ROOT_DIR": str(tmp_path),
                "RETENTION_MIN_FREE_BYTES": "0",
                "S3_BUCKET": "snapshots",
            }
        )
        # Queued by an earlier run of the daemon, in the queue file it opens.
        earlier = UploadQueue(
            settings.upload_queue_path, max_attempts=settings.storage.upload_max_attempts
        )
        try:
            earlier.add([("s3", UploadItem(queued, queued.name, "cam", NOW - 40 * DAY))])
        finally:
            earlier.close()
        daemon = Daemon("test", shutdown_timeout=5)
        storage = build_storage(settings, daemon, open_store(settings, daemon))
        uploader = storage.uploader
        assert uploader is not None
        daemon.start()  # the upload queue and the uploader, as the daemon starts them
        try:
            # The uploader tried, S3 refused, and the upload waits for its next try.
            assert wait_until(lambda: "s3" in uploader.status().failing), uploader.status()
            assert uploader.status().depth == 1
            assert storage.retention.run_once() is not None
        finally:
            assert daemon.stop()
    assert [r.method for r in s3.requests] == ["PUT"]
    assert queued.exists()
    assert not old.exists()


def test_the_daemons_retention_removes_nothing_while_its_outbox_cannot_be_read(
    tmp_path: Path,
) -> None:
    settings = config.load(env={"SNAPSHOTS_ROOT_DIR": str(tmp_path)})
    old = snapshot(tmp_path, "old.jpg", 40 * DAY)
    settings.outbox_path.write_bytes(b"not a database" * 200)

    with bundle_file(settings) as bundles:
        worker = build_storage(settings, Daemon("test", shutdown_timeout=5), bundles).retention
        assert worker.run_once() is None
    assert old.exists()
    [trouble] = worker.troubles()
    assert trouble.startswith("retention: sweep skipped, nothing removed: OutboxError")


def test_a_bundles_files_are_kept_until_it_is_sealed_then_its_folders_go(
    tmp_path: Path,
) -> None:
    settings = config.load(
        env={"SNAPSHOTS_ROOT_DIR": str(tmp_path), "RETENTION_MIN_FREE_BYTES": "0"}
    )
    old_day = time.strftime("%Y/%m/%d", time.gmtime(NOW - 40 * DAY))
    open_group, sealed_group = f"{old_day}/open", f"{old_day}/sealed"
    open_frame = bundled(tmp_path, open_group, "a.jpg", 40 * DAY)
    sealed_frame = bundled(tmp_path, sealed_group, "b.jpg", 40 * DAY)
    with bundle_file(settings) as bundles:
        for bundle_id, group, path in (
            ("open", open_group, open_frame),
            ("sealed", sealed_group, sealed_frame),
        ):
            bundles.record(
                joined=[(bundle_id, group, NOW - 40 * DAY, None, "cam", "Cam", 1)],
                files=[NewFile(bundle_id, path, FRAME, NOW - 40 * DAY, path.read_bytes())],
            )
            bundles.complete(bundle_id, "all cameras", NOW - 40 * DAY, "-")
        assert bundles.seal("sealed", NOW - 40 * DAY)
        worker = build_storage(settings, Daemon("test", shutdown_timeout=5), bundles).retention
        assert worker.run_once() is not None
    # The bundle still uploading keeps its file; the sealed one's goes, and its folder.
    assert open_frame.exists()
    assert not sealed_frame.exists()
    assert not sealed_frame.parent.exists()
    assert open_frame.parent.exists()


def test_empty_bundle_folders_of_past_days_are_removed_today_s_stay(tmp_path: Path) -> None:
    old_day = time.strftime("%Y/%m/%d", time.gmtime(NOW - 40 * DAY))
    today = time.strftime("%Y/%m/%d", time.gmtime(NOW))
    for day in (old_day, today):
        (tmp_path / "bundles" / day / "empty").mkdir(parents=True)
    sweep(tmp_path, RetentionPolicy(None, None), (), NOW)
    assert not (tmp_path / "bundles" / old_day).exists()
    assert (tmp_path / "bundles" / today / "empty").exists()
