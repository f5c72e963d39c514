"""The upload queue: due items oldest first, retries and parking, on disk across reopen,
SIGKILL and a damaged file, usable from several threads."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue, UploadQueueError
from tests.support.metrics import sample, sample_gauge
from tests.support.paths import CHECKOUT
from tests.support.wait import wait_until

REPO_ROOT = CHECKOUT


def item(folder: Path, n: int, camera: str = "front door") -> UploadItem:
    return UploadItem(folder / f"snap-{n}.jpg", f"snap-{n}.jpg", camera, 1_700_000_000.0 + n)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "deep" / "uploads.sqlite3"


@pytest.fixture
def queue(db_path: Path) -> Iterator[UploadQueue]:
    opened = UploadQueue(db_path, max_attempts=3)
    yield opened
    opened.close()


def test_due_items_come_oldest_first_and_done_forgets_them(
    queue: UploadQueue, tmp_path: Path
) -> None:
    queue.add([("drive", item(tmp_path, n)) for n in range(3)])
    queue.add([("s3", item(tmp_path, 0))])
    now = time.time()

    due = queue.due(now, limit=10)
    assert [(u.destination, u.item.name) for u in due] == [
        ("drive", "snap-0.jpg"),
        ("drive", "snap-1.jpg"),
        ("drive", "snap-2.jpg"),
        ("s3", "snap-0.jpg"),
    ]
    assert due[0].item == item(tmp_path, 0)
    assert due[0].attempts == 0
    assert [u.item.name for u in queue.due(now, limit=2)] == ["snap-0.jpg", "snap-1.jpg"]
    assert [u.destination for u in queue.due(now, 10, destinations=["s3"])] == ["s3"]
    assert queue.due(now, 10, destinations=[]) == []
    assert queue.depth() == 4

    assert queue.done(due[0].id)
    assert not queue.done(due[0].id)
    assert queue.depth() == 3
    assert queue.holds(tmp_path / "snap-0.jpg")  # still queued for s3
    assert queue.done(due[3].id)
    assert not queue.holds(tmp_path / "snap-0.jpg")


def test_a_higher_priority_goes_ahead_and_groups_come_back(
    queue: UploadQueue, tmp_path: Path
) -> None:
    queue.add([("s3", item(tmp_path, n)) for n in range(3)])
    first = UploadItem(tmp_path / "small.jpg", "small.jpg", "yard", 1.0, "2026/12/07/b", 1)
    queue.add([("s3", first)])
    due = queue.due(time.time(), limit=10)
    assert [u.item.name for u in due] == ["small.jpg", "snap-0.jpg", "snap-1.jpg", "snap-2.jpg"]
    assert due[0].item == first  # its group and priority read back
    assert queue.due(time.time(), limit=1)[0].item.name == "small.jpg"


def test_a_duplicate_is_ignored(queue: UploadQueue, tmp_path: Path) -> None:
    queue.add([("drive", item(tmp_path, 1))])
    first = queue.due(time.time(), 10)[0]
    queue.retry(first.id, "503", time.time() + 100)
    queue.add([("drive", item(tmp_path, 1)), ("drive", item(tmp_path, 2))])
    assert queue.depth() == 2
    # The duplicate did not reset the first one's schedule or attempts.
    assert [u.item.name for u in queue.due(time.time(), 10)] == ["snap-2.jpg"]


def test_retry_waits_then_parks_after_max_attempts(queue: UploadQueue, tmp_path: Path) -> None:
    queue.add([("drive", item(tmp_path, 1)), ("drive", item(tmp_path, 2))])
    now = time.time()
    first = queue.due(now, 1)[0]

    assert queue.retry(first.id, "503 Service Unavailable", now + 60) is False
    assert [u.item.name for u in queue.due(now, 10)] == ["snap-2.jpg"]
    assert queue.next_due() == pytest.approx(now, abs=5)
    assert queue.next_due(["drive"]) == pytest.approx(now, abs=5)
    assert queue.next_due(["s3"]) is None
    later = queue.due(now + 61, 10)
    assert [(u.item.name, u.attempts) for u in later] == [("snap-1.jpg", 1), ("snap-2.jpg", 0)]

    assert queue.retry(first.id, "503 again", now + 120) is False
    assert queue.retry(first.id, "503 for the third time", now + 180) is True
    assert queue.parked() == 1
    assert queue.depth() == 1
    assert [u.item.name for u in queue.due(now + 10_000, 10)] == ["snap-2.jpg"]
    # Parked is not done: the file is still not safe to remove.
    assert queue.holds(tmp_path / "snap-1.jpg")
    assert str(tmp_path / "snap-1.jpg") in queue.pending_paths()
    ((parked, reason),) = queue.parked_uploads()
    assert parked.item.name == "snap-1.jpg"
    assert reason == "503 for the third time"
    # A parked item is not retried or parked again.
    assert queue.retry(first.id, "late", now) is False
    assert not queue.park(first.id, "late")


def test_park_sets_an_item_aside_and_requeue_brings_it_back(
    queue: UploadQueue, tmp_path: Path
) -> None:
    queue.add([("drive", item(tmp_path, 1)), ("s3", item(tmp_path, 2))])
    now = time.time()
    drive, s3 = queue.due(now, 10)
    assert queue.park(drive.id, "400 Bad Request")
    assert queue.park(s3.id, "NoSuchBucket")
    assert queue.parked() == 2
    assert queue.parked(since=now - 60) == 2
    assert queue.parked(since=time.time() + 60) == 0
    assert queue.depth() == 0
    assert queue.oldest_age(now) is None
    assert queue.next_due() is None
    assert queue.by_destination() == {"drive": 1, "s3": 1}

    assert queue.requeue_parked("s3") == 1
    assert [(u.destination, u.attempts) for u in queue.due(time.time(), 10)] == [("s3", 0)]
    assert queue.parked() == 1


def test_holds_and_pending_paths_use_absolute_paths(
    queue: UploadQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    queue.add([("drive", UploadItem(Path("rel/a.jpg"), "a.jpg", "cam", 1.0))])
    assert queue.holds(tmp_path / "rel" / "a.jpg")
    assert queue.holds("rel/a.jpg")
    assert queue.pending_paths() == {str(tmp_path / "rel" / "a.jpg")}
    assert queue.due(time.time(), 1)[0].item.path == tmp_path / "rel" / "a.jpg"


def test_depth_age_and_gauges(queue: UploadQueue, tmp_path: Path) -> None:
    assert queue.oldest_age(time.time()) is None
    queue.add([("drive", item(tmp_path, n)) for n in range(4)])
    assert queue.depth() == 4
    age = queue.oldest_age(time.time() + 100)
    assert age is not None
    assert age >= 100
    assert sample_gauge("upload_queue_depth") == 4
    oldest = sample_gauge("upload_queue_oldest_seconds")
    assert oldest is not None
    assert oldest >= 0
    queue.park(queue.due(time.time(), 1)[0].id, "refused")
    assert sample_gauge("upload_queue_depth") == 3
    assert sample_gauge("upload_queue_parked") == 1


def test_survives_close_and_reopen(db_path: Path, tmp_path: Path) -> None:
    first = UploadQueue(db_path, max_attempts=3)
    first.add([("drive", item(tmp_path, n)) for n in range(3)])
    one = first.due(time.time(), 1)[0]
    first.retry(one.id, "timeout", time.time() - 1)
    first.close()
    first.close()  # twice is harmless
    with pytest.raises(UploadQueueError, match="closed"):
        first.depth()

    again = UploadQueue(db_path, max_attempts=3)
    try:
        due = again.due(time.time(), 10)
        assert [(u.item, u.attempts) for u in due] == [
            (item(tmp_path, 0), 1),
            (item(tmp_path, 1), 0),
            (item(tmp_path, 2), 0),
        ]
        # Two more failures use up the attempts counted before the restart.
        assert again.retry(due[0].id, "timeout", 0) is False
        assert again.retry(due[0].id, "timeout", 0) is True
    finally:
        again.close()


def test_a_queue_written_before_the_folder_column_was_renamed_keeps_its_rows(
    db_path: Path, tmp_path: Path
) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as old:  # the schema as an earlier version wrote it
        old.execute(
            "CREATE TABLE uploads (id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT"
            " NULL, path TEXT NOT NULL, name TEXT NOT NULL, camera_key TEXT NOT NULL, taken"
            " REAL NOT NULL, added REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try"
            " REAL NOT NULL, parked REAL, reason TEXT, UNIQUE (destination, path))"
        )
        old.execute(
            "INSERT INTO uploads (destination, path, name, camera_key, taken, added, next_try)"
            " VALUES ('drive', ?, 'snap-0.jpg', 'front door', 1700000000.0, 1.0, 0.0)",
            (str(tmp_path / "snap-0.jpg"),),
        )
    old.close()
    queue = UploadQueue(db_path, max_attempts=3)
    try:
        [due] = queue.due(time.time(), 10)
        assert due.item == item(tmp_path, 0)
        queue.add([("drive", item(tmp_path, 1))])
        assert queue.depth() == 2
    finally:
        queue.close()


def test_every_connection_syncs_fully(db_path: Path, tmp_path: Path) -> None:
    """An upload is on disk when add returns only with synchronous=FULL (2) or EXTRA (3):
    in WAL mode, NORMAL leaves the last commits to a power cut. A fresh file, a reopened
    one and the fresh one that replaces a damaged file each get it."""
    fresh = UploadQueue(db_path, max_attempts=3)
    try:
        assert fresh.synchronous >= 2
        fresh.add([("drive", item(tmp_path, 1))])
    finally:
        fresh.close()
    reopened = UploadQueue(db_path, max_attempts=3)
    try:
        assert reopened.synchronous >= 2
    finally:
        reopened.close()
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not a database, " * 400)
    replaced = UploadQueue(damaged, max_attempts=3)
    try:
        assert replaced.synchronous >= 2
    finally:
        replaced.close()


def test_sigkill_loses_nothing_add_returned_for(db_path: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pylib.upload.destination import UploadItem
        from pylib.upload.queue import UploadQueue

        queue = UploadQueue(Path({str(db_path)!r}), max_attempts=5)
        n = 0
        while True:
            path = Path({str(tmp_path)!r}) / f"snap-{{n}}.jpg"
            queue.add([("drive", UploadItem(path, path.name, "cam", float(n))),
                       ("s3", UploadItem(path, path.name, "cam", float(n)))])
            print(n, flush=True)
            n += 1
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) >= 40:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 40, "the child stopped early"

    queue = UploadQueue(db_path, max_attempts=5)
    try:
        kept = {(u.destination, u.item.name) for u in queue.due(time.time(), 100_000)}
        for n in acknowledged:
            assert ("drive", f"snap-{n}.jpg") in kept
            assert ("s3", f"snap-{n}.jpg") in kept
        # All or nothing per add: never one destination without the other.
        assert len(kept) % 2 == 0
    finally:
        queue.close()


def test_a_damaged_file_is_moved_aside_and_a_fresh_queue_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "uploads.sqlite3"
    path.write_bytes(b"this is not a database, " * 400)
    before = sample("upload_queue_damaged_total")
    queue = UploadQueue(path, max_attempts=3)
    try:
        assert queue.depth() == 0
        queue.add([("drive", item(tmp_path, 1))])
        assert queue.depth() == 1
    finally:
        queue.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("uploads.sqlite3.damaged-")]
    assert [p.read_bytes() for p in aside] == [b"this is not a database, " * 400]
    assert sample("upload_queue_damaged_total") == before + 1
    assert "is damaged" in caplog.text


def test_a_folder_in_the_way_is_an_error_not_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "uploads.sqlite3"
    path.mkdir()
    with pytest.raises(UploadQueueError, match=str(path)) as caught:
        UploadQueue(path, max_attempts=3)
    assert not caught.value.damaged
    assert path.is_dir()


def test_several_threads_add_and_take_at_once(queue: UploadQueue, tmp_path: Path) -> None:
    errors: list[BaseException] = []
    finished: set[int] = set()

    def add(start: int) -> None:
        try:
            for n in range(start, start + 50):
                queue.add([("drive", item(tmp_path, n))])
        except BaseException as exc:
            errors.append(exc)

    def took_all() -> bool:
        """Take what is due, as the uploader does, while the others add: all 150 taken?"""
        for upload in queue.due(time.time(), 10):
            if queue.done(upload.id):
                finished.add(int(upload.item.name.split("-")[1].split(".")[0]))
        queue.oldest_age(time.time())
        queue.pending_paths()
        return len(finished) >= 150

    def take() -> None:
        try:
            wait_until(took_all, 30, step=0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(k * 50,)) for k in range(3)]
    threads.append(threading.Thread(target=take))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert finished == set(range(150))
    assert queue.depth() == 0


def test_max_attempts_must_be_positive(db_path: Path) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        UploadQueue(db_path, max_attempts=0)
