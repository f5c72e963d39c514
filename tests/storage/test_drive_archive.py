"""The Drive archive: old files into year/month/day folders, starred ones left, safe to rerun."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pylib.upload.destination import UploadItem
from snapshot_processor import cli
from snapshot_processor.storage.drive.archive import DriveArchiveError
from snapshot_processor.storage.drive.destination import DriveDestination
from tests.support.fakes import Request
from tests.support.fakes.drive import FakeDrive

# Six days back from here cross the end of February in a leap year.
NOW = datetime(2024, 3, 3, 12, 0, tzinfo=UTC)
FOLDER = "Snapshots"


def seed(fake: FakeDrive, now: datetime, count: int = 250) -> tuple[str, dict[str, str]]:
    """``count`` files over six days in a new top folder; returns its id and, per file id,
    the folder path it must end in."""
    top = fake.add_file(FOLDER, folder=True)
    expected = {}
    for n in range(count):
        taken = now - timedelta(minutes=35 * n + 1)
        created = taken + timedelta(seconds=20)
        if n % 10 == 3:
            title = f"IMG_{n:04d}.jpg"  # not the daemon's name: dated by createdDate
        else:
            title = f"porch-camera_{taken:%Y%m%dT%H%M%S.%f}Z_{n:012x}.jpg"
            if n % 25 == 7:
                created = now - timedelta(hours=1)  # uploaded late: the name's date counts
        starred = n % 7 == 0
        file_id = fake.add_file(title, top, created=created, starred=starred, content=b"jpg")
        due = now - taken >= timedelta(hours=24)
        expected[file_id] = f"{FOLDER}/{taken:%Y/%m/%d}" if due and not starred else FOLDER
    return top, expected


def assert_no_twin_folders(fake: FakeDrive) -> None:
    folders = fake.files(folders=True)
    seen = Counter((folder.parents[0], folder.title) for folder in folders)
    assert [key for key, count in seen.items() if count > 1] == []


def is_folder_creation(request: Request) -> bool:
    return request.method == "POST" and request.path == "/drive/v2/files"


def is_move(request: Request) -> bool:
    return request.method == "PATCH"


def archive_destination(fake: FakeDrive, credentials: Path) -> DriveDestination:
    return DriveDestination(
        FOLDER,
        credentials,
        fake.api_url,
        archive_after_hours=24,
        archive_page_size=50,
        timeout=10,
    )


def test_archive_of_250_files_interrupted_then_run_again(
    fake: FakeDrive, credentials: Path
) -> None:
    _, expected = seed(fake, NOW)
    due = sum(1 for path in expected.values() if path != FOLDER)
    drive = archive_destination(fake, credentials)
    try:
        # 1: the third folder is made, but its answer is lost.
        fake.fail(503, after_work=True, skip=2, when=is_folder_creation)
        with pytest.raises(DriveArchiveError) as first:
            drive.archive(NOW.timestamp())
        # 2: Drive fails on the 60th move.
        fake.fail(500, skip=59, when=is_move)
        with pytest.raises(DriveArchiveError) as second:
            drive.archive(NOW.timestamp())
        assert len(second.value.summary.moved) == 59
        # 3: runs to the end.
        third = drive.archive(NOW.timestamp())
        # 4: nothing left to do.
        fourth = drive.archive(NOW.timestamp())
    finally:
        drive.close()

    moved = first.value.summary.moved + second.value.summary.moved + third.moved
    assert len(moved) == due
    assert len({m.file_id for m in moved}) == due
    assert fourth.moved == []
    assert fourth.starred == sum(1 for n in range(250) if n % 7 == 0)
    for file_id, path in expected.items():
        assert fake.path_of(file_id) == path, fake.file(file_id).title
    assert_no_twin_folders(fake)
    days = {path for path in expected.values() if path != FOLDER}
    assert len(days) >= 5
    assert f"{FOLDER}/2024/02/29" in days
    assert f"{FOLDER}/2024/03/01" in days
    # Exactly the folders needed: 1 top, 1 year, 2 months, and the days.
    assert len(fake.files(folders=True)) == 1 + 1 + 2 + len(days)
    # The listing was paged, 50 at a time.
    listings = [
        r for r in fake.requests if r.method == "GET" and "in parents" in (r.param("q") or "")
    ]
    assert {r.param("maxResults") for r in listings if "mimeType !=" in (r.param("q") or "")} == {
        "50"
    }
    assert any(r.param("pageToken") == "200" for r in listings)
    assert third.lines()[-1].startswith(f"moved {len(third.moved)} file(s)")


def test_starred_and_recent_files_stay(fake: FakeDrive, credentials: Path) -> None:
    top = fake.add_file(FOLDER, folder=True)
    old = NOW - timedelta(days=2)
    starred = fake.add_file("porch_20240301T120000.000000Z_a.jpg", top, created=old, starred=True)
    recent = fake.add_file("porch_20240303T110000.000000Z_b.jpg", top, created=NOW)
    moved = fake.add_file("porch_20240301T120000.000000Z_c.jpg", top, created=old)
    drive = archive_destination(fake, credentials)
    try:
        summary = drive.archive(NOW.timestamp())
    finally:
        drive.close()
    assert (summary.starred, summary.recent, len(summary.moved)) == (1, 1, 1)
    assert fake.path_of(starred) == FOLDER
    assert fake.path_of(recent) == FOLDER
    assert fake.path_of(moved) == f"{FOLDER}/2024/03/01"
    assert summary.folders_created == ["2024", "2024/03", "2024/03/01"]


def test_housekeeping_archives_once_per_interval(fake: FakeDrive, credentials: Path) -> None:
    top = fake.add_file(FOLDER, folder=True)
    fake.add_file("porch_20240301T120000.000000Z_a.jpg", top)
    drive = DriveDestination(
        FOLDER, credentials, fake.api_url, archive_after_hours=24, archive_interval=600, timeout=10
    )
    now = NOW.timestamp()
    try:
        drive.housekeeping(now)
        assert fake.files(top, folders=False) == []
        link = drive.link(UploadItem(Path("porch.jpg"), "porch.jpg", "porch", now))
        assert link == f"https://drive.google.com/drive/folders/{top}"
        late = fake.add_file("porch_20240301T130000.000000Z_b.jpg", top)
        drive.housekeeping(now + 10)
        assert [f.id for f in fake.files(top, folders=False)] == [late]  # not due yet
        fake.fail(503, times=1)
        drive.housekeeping(now + 600)  # due, but Drive fails: logged, not raised
        assert [f.id for f in fake.files(top, folders=False)] == [late]
        drive.housekeeping(now + 1200)
    finally:
        drive.close()
    assert fake.files(top, folders=False) == []


def write_config(tmp_path: Path, fake: FakeDrive, credentials: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'SNAPSHOTS_ROOT_DIR = "{tmp_path / "data"}"\n'
        f'GOOGLE_DRIVE_FOLDER = "{FOLDER}"\n'
        f'GOOGLE_DRIVE_CREDENTIALS = "{credentials}"\n'
        f'GOOGLE_DRIVE_API_URL = "{fake.api_url}"\n'
        "DRIVE_ARCHIVE_AFTER_HOURS = 24\n"
    )
    return path


def test_drive_archive_command_prints_what_it_moved(
    fake: FakeDrive, credentials: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, fake, credentials)
    now = datetime.now(UTC)
    top, expected = seed(fake, now, count=40)
    due = sum(1 for path in expected.values() if path != FOLDER)

    assert cli.main(["--config", str(settings), "drive-archive"]) == 0

    out = capsys.readouterr().out
    assert f"moved {due} file(s)" in out
    for path in set(expected.values()) - {FOLDER}:
        assert path.removeprefix(FOLDER + "/") in out
    assert top  # the top folder stays


def test_drive_archive_command_fails_with_one_clear_line(
    fake: FakeDrive, credentials: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, fake, credentials)
    assert cli.main(["--config", str(settings), "drive-archive"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "snapshot-processor drive-archive: archive not started: no Drive folder titled 'Snapshots' is visible "
        "to these credentials; run it again to go on"
    ]
    seed(fake, datetime.now(UTC), count=60)  # the last 18 are due
    fake.fail(503, "backendError", times=100, when=is_move)
    assert cli.main(["--config", str(settings), "drive-archive"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "Drive answered 503 backendError" in err[0]
