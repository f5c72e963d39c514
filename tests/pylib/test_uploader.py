"""The uploader drains the queue: retries, parks, keeps one failing file or destination
from blocking the rest, wakes at once for new items and stops at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from pylib.retry import RetryPolicy
from pylib.upload.destination import UploadItem, UploadRefusedError, UploadRetryError
from pylib.upload.queue import UploadQueue
from pylib.upload.uploader import Uploader
from tests.support.metrics import sample
from tests.support.wait import wait_until

FAST = RetryPolicy(first=0.01, factor=2.0, maximum=0.05)
# Long enough that only wake() or stop() can end the uploader's sleep within a test.
NEVER = 3600.0


class ScriptedDestination:
    """A stand-in for an outside storage service: each file's answers are scripted."""

    links_ahead = False

    def __init__(
        self,
        name: str,
        script: Mapping[str, list[Exception]] | None = None,
        always: Exception | None = None,
    ) -> None:
        self.name = name
        self.script = {key: list(value) for key, value in (script or {}).items()}
        self.always = always
        self.attempts: list[str] = []
        self.uploaded: list[str] = []
        self.housekeeping_calls = 0
        self.closed_by: str | None = None
        self._lock = threading.Lock()

    def link(self, item: UploadItem) -> str | None:
        return f"https://storage.invalid/{self.name}/{item.name}"

    def upload(self, item: UploadItem) -> None:
        with self._lock:
            self.attempts.append(item.name)
            answers = self.script.get(item.name)
            failure = answers.pop(0) if answers else self.always
        if failure is not None:
            raise failure
        with self._lock:
            self.uploaded.append(item.name)

    def housekeeping(self, now: float) -> None:
        self.housekeeping_calls += 1
        if self.housekeeping_calls == 1:
            raise OSError("housekeeping could not list the folder")

    def close(self) -> None:
        self.closed_by = threading.current_thread().name


def item(n: int) -> UploadItem:
    return UploadItem(Path(f"/data/snapshots/cam/snap-{n}.jpg"), f"snap-{n}.jpg", "cam", 1e9 + n)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[UploadQueue]:
    opened = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=3)
    yield opened
    opened.close()


@pytest.fixture
def started() -> Iterator[list[Uploader]]:
    uploaders: list[Uploader] = []
    yield uploaders
    for uploader in uploaders:
        assert uploader.stop_and_join(10), "the uploader did not stop"


def start(
    uploaders: list[Uploader],
    queue: UploadQueue,
    *destinations: ScriptedDestination,
    housekeeping_every: float = 0.05,
    trouble_after: float = 0.0,
    on_uploaded: Callable[[str, UploadItem], None] | None = None,
) -> Uploader:
    uploader = Uploader(
        queue,
        {d.name: d for d in destinations},
        threading.Event(),
        item_retry=FAST,
        destination_retry=FAST,
        housekeeping_every=housekeeping_every,
        trouble_after=trouble_after,
        on_uploaded=on_uploaded,
    )
    uploaders.append(uploader)
    uploader.start()
    return uploader


def test_retries_then_success(queue: UploadQueue, started: list[Uploader]) -> None:
    drive = ScriptedDestination(
        "drive",
        {"snap-1.jpg": [UploadRetryError("503: backend error"), TimeoutError("read timed out")]},
    )
    retries, done = (
        sample("uploads_total", destination="drive", result="retry"),
        sample("uploads_total", destination="drive", result="done"),
    )
    queue.add([("drive", item(1))])
    start(started, queue, drive).wake()

    assert wait_until(lambda: queue.depth() == 0 and drive.uploaded == ["snap-1.jpg"])
    assert drive.attempts == ["snap-1.jpg"] * 3
    assert queue.parked() == 0
    assert sample("uploads_total", destination="drive", result="retry") == retries + 2
    assert sample("uploads_total", destination="drive", result="done") == done + 1
    assert sample("upload_seconds_count", destination="drive") >= 1


def test_each_copy_is_told_before_the_queue_forgets_it_and_a_failing_listener_stops_nothing(
    queue: UploadQueue, started: list[Uploader]
) -> None:
    drive = ScriptedDestination("drive", {"snap-1.jpg": [UploadRetryError("503")]})
    told: list[tuple[str, str, bool]] = []
    failures = sample("upload_hook_failures_total")

    def listener(destination: str, copied: UploadItem) -> None:
        told.append((destination, copied.name, queue.holds(copied.path)))
        if copied.name == "snap-2.jpg":
            raise RuntimeError("the listener's own trouble")

    queue.add([("drive", item(n)) for n in (1, 2, 3)])
    start(started, queue, drive, on_uploaded=listener).wake()
    assert wait_until(lambda: len(told) == 3)
    # Only verified copies are told of, while the queue still holds them (so a file is
    # always queued or told of), the failed attempt not at all; a listener that fails is
    # counted and the uploads go on.
    assert sorted(told) == [("drive", f"snap-{n}.jpg", True) for n in (1, 2, 3)]
    assert sample("upload_hook_failures_total") == failures + 1
    assert queue.depth() == 0


def test_a_refused_file_is_parked_while_the_next_goes_through(
    queue: UploadQueue, started: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    drive = ScriptedDestination("drive", {"snap-1.jpg": [UploadRefusedError("400: bad name")]})
    parked = sample("uploads_total", destination="drive", result="parked")
    queue.add([("drive", item(1)), ("drive", item(2))])
    uploader = start(started, queue, drive)

    assert wait_until(lambda: drive.uploaded == ["snap-2.jpg"])
    assert wait_until(lambda: queue.parked() == 1)
    assert drive.attempts == ["snap-1.jpg", "snap-2.jpg"]  # refused once, never again
    assert queue.depth() == 0
    assert queue.holds(item(1).path)  # parked: its file is kept
    assert sample("uploads_total", destination="drive", result="parked") == parked + 1
    assert "1 upload(s) parked in the last 24 h (refused or out of tries)" in uploader.troubles()
    assert "upload of snap-1.jpg to drive refused, parked: 400: bad name" in caplog.text


def test_a_failing_destination_does_not_block_another(
    queue: UploadQueue, started: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pylib.upload.uploader")
    drive = ScriptedDestination("drive", always=UploadRetryError("503: backend error"))
    s3 = ScriptedDestination("s3")
    queue.add([(name, item(n)) for n in range(5) for name in ("drive", "s3")])
    uploader = start(started, queue, drive, s3)

    assert wait_until(lambda: len(s3.uploaded) == 5)
    assert s3.uploaded == [f"snap-{n}.jpg" for n in range(5)]
    assert wait_until(lambda: len(drive.attempts) >= 6)
    assert drive.uploaded == []
    assert wait_until(lambda: any("uploads to drive failing for" in t for t in uploader.troubles()))
    assert any(t.endswith(": 503: backend error") for t in uploader.troubles())
    status = uploader.status()
    assert status.depth + status.parked == 5  # drive's, waiting or out of tries
    assert status.failing == {"drive": "503: backend error"}
    # One log line for the trouble, not one per failure.
    started_lines = [r for r in caplog.records if "uploads to drive failing:" in r.getMessage()]
    assert len(started_lines) == 1
    assert all(r.exc_info is None for r in caplog.records)


def test_a_destination_that_recovers_says_so_once(
    queue: UploadQueue, started: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pylib.upload.uploader")
    drive = ScriptedDestination(
        "drive", {"snap-1.jpg": [UploadRetryError("503: a"), UploadRetryError("503: b")]}
    )
    queue.add([("drive", item(1))])
    uploader = start(started, queue, drive)

    assert wait_until(lambda: drive.uploaded == ["snap-1.jpg"])
    assert wait_until(lambda: "uploads to drive recovered after 2 failure(s)" in caplog.text)
    assert not any("uploads to drive" in t for t in uploader.troubles())


def test_out_of_attempts_parks_and_logs_without_a_traceback(
    queue: UploadQueue, started: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    drive = ScriptedDestination("drive", always=RuntimeError("surprise"))
    queue.add([("drive", item(1))])
    start(started, queue, drive)

    assert wait_until(lambda: queue.parked() == 1)
    assert drive.attempts == ["snap-1.jpg"] * 3  # max_attempts
    assert queue.depth() == 0
    assert (
        "upload of snap-1.jpg to drive parked after 3 failed attempt(s): RuntimeError: surprise"
        in caplog.text
    )
    assert all(r.exc_info is None for r in caplog.records)
    ((_, reason),) = queue.parked_uploads()
    assert reason == "RuntimeError: surprise"


def test_a_hinted_pause_is_honoured(queue: UploadQueue, started: list[Uploader]) -> None:
    drive = ScriptedDestination("drive", {"snap-1.jpg": [UploadRetryError("429", after=900)]})
    queue.add([("drive", item(1))])
    before = time.time()
    start(started, queue, drive)

    assert wait_until(lambda: drive.attempts == ["snap-1.jpg"])
    assert wait_until(lambda: (queue.next_due() or 0) >= before + 900)
    assert queue.depth() == 1


def test_new_items_go_out_when_woken(queue: UploadQueue, started: list[Uploader]) -> None:
    drive = ScriptedDestination("drive")
    uploader = start(started, queue, drive, housekeeping_every=NEVER)
    queue.add([("drive", item(7))])
    uploader.wake()
    assert wait_until(lambda: drive.uploaded == ["snap-7.jpg"])


def test_stop_ends_an_idle_uploader_and_closes_destinations_on_its_thread(
    queue: UploadQueue,
) -> None:
    drive = ScriptedDestination("drive")
    uploader = Uploader(queue, {"drive": drive}, threading.Event(), housekeeping_every=NEVER)
    uploader.start()
    assert uploader.ready.is_set()
    assert uploader.stop_and_join(5)
    assert drive.closed_by == "uploader"


def test_housekeeping_runs_and_its_failure_is_survived(
    queue: UploadQueue, started: list[Uploader]
) -> None:
    drive = ScriptedDestination("drive")
    uploader = start(started, queue, drive)
    assert wait_until(lambda: drive.housekeeping_calls >= 3)
    assert uploader.is_alive()
    assert not any("housekeeping" in t for t in uploader.troubles())


def test_items_queued_before_a_restart_are_uploaded(
    tmp_path: Path, started: list[Uploader]
) -> None:
    path = tmp_path / "uploads.sqlite3"
    before = UploadQueue(path, max_attempts=3)
    before.add([("s3", item(n)) for n in range(3)])
    before.close()

    after = UploadQueue(path, max_attempts=3)
    try:
        s3 = ScriptedDestination("s3")
        start(started, after, s3)
        assert wait_until(lambda: after.depth() == 0)
        assert s3.uploaded == ["snap-0.jpg", "snap-1.jpg", "snap-2.jpg"]
    finally:
        started.pop().stop_and_join(10)
        after.close()


def test_items_of_a_destination_no_longer_configured_are_kept(
    queue: UploadQueue, started: list[Uploader], caplog: pytest.LogCaptureFixture
) -> None:
    queue.add([("drive", item(1)), ("s3", item(2))])
    s3 = ScriptedDestination("s3")
    start(started, queue, s3)
    assert wait_until(lambda: s3.uploaded == ["snap-2.jpg"])
    assert queue.by_destination() == {"drive": 1}
    assert queue.holds(item(1).path)
    assert "1 upload(s) queued for drive, which is not configured now" in caplog.text


def test_health_and_status_show_no_secret_and_survive_an_unreadable_queue(
    tmp_path: Path, started: list[Uploader]
) -> None:
    from pylib.observe.redact import register_secret

    secret = "s3cr3t-access-key-value"
    register_secret(secret)
    queue = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=3)
    s3 = ScriptedDestination("s3", always=RuntimeError(f"refused for key {secret}"))
    queue.add([("s3", item(1))])
    uploader = start(started, queue, s3)
    uploader.wake()
    assert wait_until(lambda: "s3" in uploader.status().failing)
    shown = [uploader.status().failing["s3"], *uploader.troubles()]
    assert any("refused for key" in line for line in shown)
    assert not any(secret in line for line in shown)
    assert uploader.stop_and_join(10)
    started.clear()
    queue.close()  # now it cannot be read: health says so instead of raising
    status = uploader.status()
    assert status.depth == 0
    assert "closed" in status.failing["queue"]
