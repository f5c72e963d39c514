"""Google Drive uploads through pydrive2 against a loopback Drive v2 API and token endpoint."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pylib.retry import RetryPolicy
from pylib.upload.destination import UploadItem, UploadRefusedError, UploadRetryError
from pylib.upload.queue import UploadQueue
from pylib.upload.uploader import Uploader
from snapshot_processor import cli
from snapshot_processor.storage.drive.destination import DriveDestination, service_account_note
from tests.support.drive_credentials import (
    CLIENT_SECRET,
    write_service_account,
    write_user_credentials,
)
from tests.support.fakes.drive import FOLDER_MIME, FakeDrive
from tests.support.metrics import sample
from tests.support.wait import wait_until

FOLDER = "Snapshots"


@pytest.fixture
def destination(fake: FakeDrive, credentials: Path) -> Iterator[DriveDestination]:
    drive = DriveDestination(FOLDER, credentials, fake.api_url, timeout=10)
    yield drive
    drive.close()


def snapshot(tmp_path: Path, name: str, data: bytes | None = None) -> UploadItem:
    """A local file to upload, taken now."""
    path = tmp_path / name
    path.write_bytes(data if data is not None else b"\xff\xd8" + name.encode() * 50 + b"\xff\xd9")
    return UploadItem(path=path, name=name, folder="porch camera", taken=time.time())


def top_folder(fake: FakeDrive) -> str:
    [folder] = [f for f in fake.files(folders=True) if f.title == FOLDER]
    return folder.id


def copies(fake: FakeDrive, name: str) -> list[bytes]:
    return [f.content for f in fake.files(folders=False) if f.title == name]


def inserts(fake: FakeDrive) -> int:
    return sum(
        1 for r in fake.requests if r.method == "POST" and r.path == "/upload/drive/v2/files"
    )


def test_upload_arrives_with_its_bytes_and_md5(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "porch_20240105T101500.000000Z_abc.jpg")
    assert destination.link(item) is None  # the folder is not known before any network

    destination.upload(item)

    folder = top_folder(fake)
    [stored] = fake.files(folder)
    assert stored.title == item.name
    assert stored.content == item.path.read_bytes()
    assert stored.resource()["md5Checksum"] == hashlib.md5(item.path.read_bytes()).hexdigest()
    assert stored.mime_type == "image/jpeg"
    assert destination.link(item) == f"https://drive.google.com/drive/folders/{folder}"
    # pydrive2's way: a resumable session, then the bytes in one PUT.
    assert any(r.param("uploadType") == "resumable" for r in fake.requests)
    assert any(r.method == "PUT" and r.body == item.path.read_bytes() for r in fake.requests)


def test_a_groups_files_go_into_its_folder_in_the_day_folder(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    group = "2026/12/07/20261207T200102Z_hall-pir_abcdef12"
    items = [replace(snapshot(tmp_path, f"yard_{n}.jpg"), group=group) for n in range(3)]
    assert destination.link(items[0]) is None  # no link before Drive has made the folder
    for item in items:
        destination.upload(item)
    [folder] = [f for f in fake.files(folders=True) if f.title == group.rpartition("/")[2]]
    assert fake.path_of(folder.id) == f"{FOLDER}/2026/12/07"
    assert sorted(f.title for f in fake.files(folder.id)) == [item.name for item in items]
    assert destination.link(items[0]) == folder.resource()["alternateLink"]
    # One folder for each of top, year, month, day and the group: none made twice.
    assert len(fake.files(folders=True)) == 5


def test_md5_mismatch_deletes_the_copy_then_the_retry_succeeds(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "a.jpg")
    before = sample("drive_api_errors_total", kind="checksum")
    fake.corrupt_md5()

    with pytest.raises(UploadRetryError):
        destination.upload(item)
    assert copies(fake, "a.jpg") == []  # the bad copy was deleted
    assert any(r.method == "DELETE" for r in fake.requests)
    assert sample("drive_api_errors_total", kind="checksum") == before + 1

    destination.upload(item)
    assert copies(fake, "a.jpg") == [item.path.read_bytes()]


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (500, "backendError", "server"),
        (503, "backendError", "server"),
        (403, "userRateLimitExceeded", "rate_limit"),
        (403, "rateLimitExceeded", "rate_limit"),
        (429, "rateLimitExceeded", "rate_limit"),
    ],
)
def test_passing_errors_are_retried_then_succeed(
    fake: FakeDrive,
    destination: DriveDestination,
    tmp_path: Path,
    status: int,
    reason: str,
    kind: str,
) -> None:
    destination.upload(snapshot(tmp_path, "first.jpg"))  # folder known from here
    item = snapshot(tmp_path, "second.jpg")
    before = sample("drive_api_errors_total", kind=kind)
    fake.fail(status, reason, times=2)

    for _ in range(2):  # as the uploader would: again after each failure
        with pytest.raises(UploadRetryError) as caught:
            destination.upload(item)
        if kind == "rate_limit":
            assert caught.value.after is not None
            assert caught.value.after > 0
        assert str(status) in str(caught.value)
    destination.upload(item)

    assert copies(fake, "second.jpg") == [item.path.read_bytes()]
    assert sample("drive_api_errors_total", kind=kind) == before + 2


def test_rate_limit_backs_off_exponentially(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "busy.jpg")
    destination.upload(snapshot(tmp_path, "first.jpg"))
    fake.fail(403, "userRateLimitExceeded", times=6)
    hints = []
    for _ in range(6):
        with pytest.raises(UploadRetryError) as caught:
            destination.upload(item)
        assert caught.value.after is not None
        hints.append(caught.value.after)
    # 2 s doubling with jitter in [0.5, 1]: each step's range lies above the one before's.
    assert hints[0] <= 2.0
    assert hints[-1] >= 32.0
    destination.upload(item)
    assert len(copies(fake, "busy.jpg")) == 1


def test_a_proxy_page_instead_of_json_is_retried(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "proxy.jpg")
    destination.upload(snapshot(tmp_path, "first.jpg"))
    fake.fail(502, plain_body=True)
    with pytest.raises(UploadRetryError, match="502"):
        destination.upload(item)
    destination.upload(item)
    assert len(copies(fake, "proxy.jpg")) == 1


def test_a_lost_answer_makes_no_second_copy(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "lost.jpg")
    destination.upload(snapshot(tmp_path, "first.jpg"))
    before = sample("drive_upload_copies_found_total")
    # Drive stores the file, but its answer never arrives.
    fake.fail(503, after_work=True, when=lambda r: r.method == "PUT")

    with pytest.raises(UploadRetryError):
        destination.upload(item)
    assert len(copies(fake, "lost.jpg")) == 1
    uploads_before = inserts(fake)
    destination.upload(item)

    assert len(copies(fake, "lost.jpg")) == 1
    assert inserts(fake) == uploads_before  # found by title, not sent again
    assert sample("drive_upload_copies_found_total") == before + 1


def test_a_lost_answer_makes_no_second_copy_after_the_archive_moved_the_first(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "archived.jpg")
    destination.upload(snapshot(tmp_path, "first.jpg"))
    fake.fail(503, after_work=True, when=lambda r: r.method == "PUT")
    with pytest.raises(UploadRetryError):
        destination.upload(item)
    # Before the retry, the daily archive files the landed copy into a dated folder.
    [landed] = [f for f in fake.files(folders=False) if f.title == "archived.jpg"]
    top = landed.parents[0]
    day = fake.add_file("2026", top, folder=True)
    fake.move(landed.id, day)
    uploads_before = inserts(fake)
    destination.upload(item)
    assert len(copies(fake, "archived.jpg")) == 1
    assert inserts(fake) == uploads_before
    # A file of that name elsewhere that is not the same picture is never deleted.
    fake.add_file("other.jpg", day, content=b"not ours")
    other = snapshot(tmp_path, "other.jpg")
    fake.fail(503, after_work=True, when=lambda r: r.method == "PUT")
    with pytest.raises(UploadRetryError):
        destination.upload(other)
    destination.upload(other)
    assert sorted(copies(fake, "other.jpg")) == sorted([b"not ours", other.path.read_bytes()])


def test_an_item_older_than_the_process_is_looked_up_first(
    fake: FakeDrive, credentials: Path, tmp_path: Path
) -> None:
    item = snapshot(tmp_path, "before-restart.jpg")
    first = DriveDestination(FOLDER, credentials, fake.api_url, timeout=10)
    try:
        fake.fail(503, after_work=True, when=lambda r: r.method == "PUT")
        with pytest.raises(UploadRetryError):
            first.upload(item)
    finally:
        first.close()
    # A restarted daemon: its queue hands the same item to a new destination.
    second = DriveDestination(FOLDER, credentials, fake.api_url, timeout=10)
    try:
        second.upload(item)
    finally:
        second.close()
    assert len(copies(fake, "before-restart.jpg")) == 1


def test_401_refreshes_the_token_and_the_upload_goes_on(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    destination.upload(snapshot(tmp_path, "first.jpg"))
    assert [g.grant_type for g in fake.grants] == ["refresh_token"]
    fake.expire_access_tokens()

    destination.upload(snapshot(tmp_path, "second.jpg"))  # no error reaches the uploader

    assert [g.grant_type for g in fake.grants] == ["refresh_token", "refresh_token"]
    assert len(copies(fake, "second.jpg")) == 1


def test_401_that_persists_is_retried(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    destination.upload(snapshot(tmp_path, "first.jpg"))
    item = snapshot(tmp_path, "second.jpg")
    fake.fail(401, "authError", times=3)  # the call, and both tries after a refresh
    with pytest.raises(UploadRetryError, match="401"):
        destination.upload(item)
    destination.upload(item)
    assert len(copies(fake, "second.jpg")) == 1


def test_a_400_is_refused_and_the_next_item_goes_through(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    destination.upload(snapshot(tmp_path, "first.jpg"))
    before = sample("drive_api_errors_total", kind="refused")
    fake.fail(400, "badRequest")
    with pytest.raises(UploadRefusedError, match="400 badRequest"):
        destination.upload(snapshot(tmp_path, "bad.jpg"))
    destination.upload(snapshot(tmp_path, "next.jpg"))
    assert len(copies(fake, "next.jpg")) == 1
    assert sample("drive_api_errors_total", kind="refused") == before + 1


def test_a_local_file_gone_is_refused(destination: DriveDestination, tmp_path: Path) -> None:
    item = snapshot(tmp_path, "gone.jpg")
    item.path.unlink()
    with pytest.raises(UploadRefusedError, match="gone"):
        destination.upload(item)


def test_a_deleted_folder_is_made_again(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    destination.upload(snapshot(tmp_path, "first.jpg"))
    old = top_folder(fake)
    fake.file(old).trashed = True  # someone deleted it in the web page
    fake.file(old).parents.clear()
    item = snapshot(tmp_path, "second.jpg")
    fake.fail(404, "notFound", when=lambda r: r.method == "POST")
    with pytest.raises(UploadRetryError):
        destination.upload(item)
    destination.upload(item)
    assert top_folder(fake) != old
    assert [f.title for f in fake.files(top_folder(fake))] == ["second.jpg"]


def test_twenty_uploads_at_once_into_a_new_folder_make_one_folder(
    fake: FakeDrive, destination: DriveDestination, tmp_path: Path
) -> None:
    items = [snapshot(tmp_path, f"cam_{n:02d}.jpg") for n in range(20)]
    start = threading.Barrier(len(items))
    failures: list[BaseException] = []

    def upload(item: UploadItem) -> None:
        start.wait()
        try:
            destination.upload(item)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=upload, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    folders = [f for f in fake.files(folders=True) if f.title == FOLDER]
    assert len(folders) == 1
    assert sorted(f.title for f in fake.files(folders[0].id)) == [i.name for i in items]
    creations = [r for r in fake.requests if r.method == "POST" and r.path == "/drive/v2/files"]
    assert len(creations) == 1


def test_an_existing_folder_is_used_not_duplicated(
    fake: FakeDrive, credentials: Path, tmp_path: Path
) -> None:
    existing = fake.add_file(FOLDER, folder=True)
    drive = DriveDestination(FOLDER, credentials, fake.api_url, timeout=10)
    try:
        drive.upload(snapshot(tmp_path, "x.jpg"))
    finally:
        drive.close()
    assert [f.id for f in fake.files(folders=True)] == [existing]
    assert [f.title for f in fake.files(existing)] == ["x.jpg"]


def test_revoked_access_is_a_clear_error_without_secrets(
    fake: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "drive.json"
    refresh_token = write_user_credentials(fake, path)
    fake.revoke(refresh_token)
    before = sample("drive_api_errors_total", kind="revoked")
    drive = DriveDestination(FOLDER, path, fake.api_url, timeout=10)
    item = snapshot(tmp_path, "r.jpg")
    try:
        for _ in range(2):  # nothing lost: retried, and clear each time
            with pytest.raises(UploadRetryError) as caught:
                drive.upload(item)
            text = str(caught.value)
            assert text == "Drive access was revoked; run snapshot-processor drive-auth"
        assert sample("drive_api_errors_total", kind="revoked") == before + 2
        assert "drive-auth" in caplog.text

        # A new consent written to the file is taken up without a restart.
        write_user_credentials(fake, path)
        drive.upload(item)
    finally:
        drive.close()
    assert len(copies(fake, "r.jpg")) == 1
    for secret in (refresh_token, CLIENT_SECRET):
        assert secret not in caplog.text
        assert secret not in text


def test_a_revoked_consent_is_one_error_line_over_many_retries_and_one_when_it_ends(
    fake: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "drive.json"
    fake.revoke(write_user_credentials(fake, path))
    queue = UploadQueue(tmp_path / "uploads.sqlite3", max_attempts=1000)
    drive = DriveDestination(FOLDER, path, fake.api_url, timeout=10)
    item = snapshot(tmp_path, "r.jpg")
    queue.add([("drive", item)])
    fast = RetryPolicy(first=0.02, factor=2.0, maximum=0.05)
    uploader = Uploader(
        queue,
        {"drive": drive},
        threading.Event(),
        item_retry=fast,
        destination_retry=fast,
        housekeeping_every=3600.0,
    )
    uploader.start()
    try:
        # The destination retried again and again, each time refused by the token endpoint.
        assert wait_until(lambda: sum(not grant.ok for grant in fake.grants) >= 5)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        write_user_credentials(fake, path)  # a new consent
        assert wait_until(lambda: copies(fake, "r.jpg") != [])
        assert wait_until(lambda: queue.depth() == 0)
    finally:
        assert uploader.stop_and_join(10)
        queue.close()
    assert errors == [
        "Google Drive failing: Drive access was revoked; run snapshot-processor drive-auth"
        " (uploads wait until then)"
    ]
    ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Google Drive")]
    assert len(ended) == 2
    assert ended[1].startswith("Google Drive recovered after ")


def test_no_token_or_secret_in_logs_or_errors(
    fake: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "drive.json"
    refresh_token = write_user_credentials(fake, path)
    drive = DriveDestination(FOLDER, path, fake.api_url, timeout=10)
    errors: list[str] = []
    try:
        drive.upload(snapshot(tmp_path, "one.jpg"))
        fake.expire_access_tokens()
        drive.upload(snapshot(tmp_path, "two.jpg"))
        for status, reason in ((500, "backendError"), (429, "rateLimitExceeded"), (400, "bad")):
            fake.fail(status, reason)
            try:
                drive.upload(snapshot(tmp_path, f"e{status}.jpg"))
            except (UploadRetryError, UploadRefusedError) as exc:
                errors.append(repr(exc) + str(exc))
        fake.fail(401, "authError", times=3)
        try:
            drive.upload(snapshot(tmp_path, "e401.jpg"))
        except UploadRetryError as exc:
            errors.append(repr(exc) + str(exc))
        fake.revoke(refresh_token)
        fake.expire_access_tokens()
        try:
            drive.upload(snapshot(tmp_path, "revoked.jpg"))
        except UploadRetryError as exc:
            errors.append(repr(exc) + str(exc))
    finally:
        drive.close()
    assert len(errors) == 5
    access_tokens = {
        r.headers["authorization"].removeprefix("Bearer ")
        for r in fake.requests
        if r.headers.get("authorization", "").startswith("Bearer ")
    }
    assert len(access_tokens) >= 2
    for secret in (refresh_token, CLIENT_SECRET, *access_tokens):
        assert secret not in caplog.text
        for text in errors:
            assert secret not in text


def test_service_account_credentials_work(fake: FakeDrive, tmp_path: Path) -> None:
    path = tmp_path / "sa.json"
    write_service_account(fake, path)
    shared = fake.add_file(FOLDER, parent="shared-drive-id", folder=True)
    drive = DriveDestination(FOLDER, path, fake.api_url, timeout=10)
    try:
        drive.upload(snapshot(tmp_path, "sa.jpg"))
    finally:
        drive.close()
    assert [f.title for f in fake.files(shared)] == ["sa.jpg"]
    assert [(g.grant_type, g.ok) for g in fake.grants] == [
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", True)
    ]


def test_service_account_never_makes_the_folder_in_its_own_drive(
    fake: FakeDrive, tmp_path: Path
) -> None:
    path = tmp_path / "sa.json"
    write_service_account(fake, path)
    drive = DriveDestination(FOLDER, path, fake.api_url, timeout=10)
    try:
        with pytest.raises(UploadRetryError, match="no Drive folder titled 'Snapshots'"):
            drive.upload(snapshot(tmp_path, "sa.jpg"))
    finally:
        drive.close()
    assert fake.files(folders=True) == []


def test_check_config_note_for_a_service_account(fake: FakeDrive, tmp_path: Path) -> None:
    path = tmp_path / "sa.json"
    email = write_service_account(fake, path)
    note = service_account_note(path)
    assert note is not None
    assert email in note
    assert "shared drive" in note
    assert len(note.splitlines()) <= 2
    user = tmp_path / "user.json"
    write_user_credentials(fake, user)
    assert service_account_note(user) is None


def test_unusable_credentials_file_is_retried_with_a_clear_reason(
    fake: FakeDrive, tmp_path: Path
) -> None:
    path = tmp_path / "missing.json"
    drive = DriveDestination(FOLDER, path, fake.api_url, timeout=10)
    try:
        with pytest.raises(UploadRetryError, match="does not exist"):
            drive.upload(snapshot(tmp_path, "c.jpg"))
        path.write_text('{"type": "something_else"}')
        with pytest.raises(UploadRetryError, match="expected authorized_user"):
            drive.upload(snapshot(tmp_path, "c.jpg"))
    finally:
        drive.close()
    assert not [f for f in fake.files() if f.mime_type != FOLDER_MIME]


def test_check_config_explains_a_service_account(
    fake: FakeDrive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "sa.json"
    write_service_account(fake, key)
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'SNAPSHOTS_ROOT_DIR = "{tmp_path / "data"}"\n'
        f'GOOGLE_DRIVE_FOLDER = "{FOLDER}"\n'
        f'GOOGLE_DRIVE_CREDENTIALS = "{key}"\n'
    )
    assert cli.main(["--config", str(settings), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out
    assert "service account" in out
    assert "shared drive" in out


def test_the_online_check_finds_the_folder_or_says_why_not(
    fake: FakeDrive, destination: DriveDestination
) -> None:
    fake.fail(403, "insufficientPermissions")
    with pytest.raises(RuntimeError, match="403"):
        destination.check()
    found = destination.check()
    assert found == f"folder at https://drive.google.com/drive/folders/{top_folder(fake)}"
