"""Google Drive as a destination: uploads checked by size and MD5, errors sorted, the
daily archive run from housekeeping. An upload whose answer was lost may have landed, so
an item that may have been sent before is first looked up by title: a good copy ends the
upload, a bad one is deleted."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter
from pydrive2.files import GoogleDriveFile

from pylib.observe.logs import printable
from pylib.observe.trouble import TroubleLog
from pylib.retry import RetryPolicy
from pylib.upload.destination import UploadItem, UploadRefusedError, UploadRetryError
from snapshot_processor.storage.drive.archive import (
    ArchiveSummary,
    DriveArchiveError,
    DriveArchiver,
)
from snapshot_processor.storage.drive.errors import DriveCredentialsError, DriveFailure, classify
from snapshot_processor.storage.drive.folders import FolderCache, quote
from snapshot_processor.storage.drive.session import (
    DEFAULT_API_URL,
    DriveSession,
    read_credentials_file,
)
from snapshot_processor.storage.settings import StorageSettings

log = logging.getLogger(__name__)

DRIVE_ERRORS = Counter(
    "drive_api_errors_total", "Failed Drive calls and uploads, by kind", ["kind"]
)
DRIVE_UPLOADS = Counter("drive_uploads_total", "Files uploaded to Drive and checked")
DRIVE_COPIES_FOUND = Counter(
    "drive_upload_copies_found_total",
    "Retried uploads that found their file already in Drive (an answer lost earlier)",
)

_ARCHIVE_RETRY = 3600.0
# Group folder links remembered for the links of later files of the group.
_GROUP_LINKS_KEPT = 1000
# Moves per housekeeping call, so a large backlog never holds up uploads for long.
_ARCHIVE_MOVES_PER_CALL = 200


@dataclass(frozen=True)
class _LocalFile:
    size: int
    md5: str


def _local_facts(path: Path) -> _LocalFile:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return _LocalFile(size, digest.hexdigest())


def _sent_key(item: UploadItem) -> str:
    """What names an upload that may have landed: its name, in its group's folder if any."""
    return f"{item.group}/{item.name}" if item.group else item.name


def _matches(remote: GoogleDriveFile, local: _LocalFile) -> bool:
    try:
        size = int(remote.get("fileSize") or -1)
    except (TypeError, ValueError):
        size = -1
    return remote.get("md5Checksum") == local.md5 and size == local.size


class DriveDestination:
    """Uploads to one Drive folder through pydrive2 (see the module docstring)."""

    name = "drive"
    links_ahead = False  # a group's folder has a link once Drive has made it

    def __init__(
        self,
        folder_title: str,
        credentials_file: Path,
        api_url: str = DEFAULT_API_URL,
        archive_after_hours: float = 24.0,
        archive_interval: float = 86_400.0,
        *,
        timeout: float = 60.0,
        archive_page_size: int = 100,
        rate_limit: RetryPolicy = StorageSettings.DRIVE_RATE_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder_title = folder_title
        self._rate_limit = rate_limit
        self._session = DriveSession(credentials_file, api_url, timeout)
        self._folders = FolderCache(self._session)
        self._archive_after_hours = archive_after_hours
        self._archive_interval = archive_interval
        self._archive_page_size = archive_page_size
        self._archive_due: float | None = None
        self._started = clock()
        self._lock = threading.Lock()
        self._maybe_sent: set[str] = set()
        self._rate_limited = 0
        self._folder_link: str | None = None
        self._group_links: dict[str, str] = {}  # group -> its folder's link, newest last
        # What a person must mend (consent, credentials, folder): not an ERROR at every retry.
        self._access = TroubleLog(log, "Google Drive", level=logging.ERROR)

    def folder(self) -> GoogleDriveFile:
        """The top folder, found or created on first use (network), then kept; for a
        service account (its own My Drive takes no uploads) it must exist already."""
        create = not self._session.is_service_account
        folder = self._folders.folder(self.folder_title, create=create)
        self._folder_link = folder.get("alternateLink") or self._folder_link
        return folder

    def link(self, item: UploadItem) -> str | None:
        """The top folder's ``alternateLink`` once it is known, or for an item of a group
        its group folder's (None until that folder is made); no network."""
        if item.group:
            with self._lock:
                return self._group_links.get(item.group)
        return self._folder_link

    def _target(self, item: UploadItem) -> str:
        """The id of the folder the item goes in: the top folder, or its group's folder
        (``YYYY/MM/DD/<name>`` below it, beside what the archive files there), made if need be."""
        folder_id = str(self.folder()["id"])
        if not item.group:
            return folder_id
        for part in item.group.strip("/").split("/"):
            found = self._folders.folder(part, folder_id)
            folder_id = str(found["id"])
        link = found.get("alternateLink")
        if link:
            with self._lock:
                self._group_links[item.group] = str(link)
                while len(self._group_links) > _GROUP_LINKS_KEPT:
                    self._group_links.pop(next(iter(self._group_links)))
        return folder_id

    def upload(self, item: UploadItem) -> None:
        """Upload one file and check Drive's copy; raises the contract's errors."""
        try:
            local = _local_facts(item.path)
        except FileNotFoundError:
            DRIVE_ERRORS.labels("local_missing").inc()
            raise UploadRefusedError(f"local file {printable(item.path)} is gone") from None
        except OSError as exc:
            DRIVE_ERRORS.labels("local_unreadable").inc()
            raise UploadRetryError(
                f"cannot read local file {printable(item.path)}: {exc.strerror}"
            ) from None
        try:
            self._upload(item, local)
        except (UploadRetryError, UploadRefusedError):
            raise
        except Exception as exc:
            raise self._sorted(exc, item) from None
        with self._lock:
            self._maybe_sent.discard(_sent_key(item))
            self._rate_limited = 0
        self._access.succeeded()

    def _upload(self, item: UploadItem, local: _LocalFile) -> None:
        drive = self._session.ready()
        folder_id = self._target(item)
        with self._lock:
            look_first = _sent_key(item) in self._maybe_sent or item.taken < self._started
            # From here on a copy may land in Drive even if its answer never comes back.
            self._maybe_sent.add(_sent_key(item))
        if look_first and self._copy_exists(item, local, folder_id):
            return
        self._session.ready()
        file = drive.CreateFile(
            {
                "title": item.name,
                "mimeType": mimetypes.guess_type(item.name)[0] or "application/octet-stream",
                "parents": [{"id": folder_id}],
            }
        )
        with item.path.open("rb") as handle:
            file.content = handle
            file.Upload()
        if not _matches(file, local):
            self._discard_bad_copy(file, item)
            DRIVE_ERRORS.labels("checksum").inc()
            log.warning(
                "Drive's copy of %s differs from the local file (size %s vs %d, md5 %s vs %s);"
                " deleted it, it will be uploaded again",
                printable(item.name),
                printable(file.get("fileSize")),
                local.size,
                printable(file.get("md5Checksum")),
                local.md5,
            )
            raise UploadRetryError("Drive's copy differs from the local file (size or MD5)")
        DRIVE_UPLOADS.inc()
        log.debug("uploaded %s to Drive (%d bytes)", printable(item.name), local.size)

    def _copy_exists(self, item: UploadItem, local: _LocalFile, folder_id: str) -> bool:
        """True if a good copy is in Drive already, wherever the archive moved it (names are
        unique); bad copies in the folder itself are deleted, nothing anywhere else."""
        q = f"title = {quote(item.name)} and trashed = false"
        if item.group:  # a name unique only in its folder (every bundle has a manifest.json)
            q += f" and {quote(folder_id)} in parents"
        good = False
        for copy in self._session.list_files(q, 100):
            if not good and _matches(copy, local):
                good = True
            elif folder_id in {str(parent.get("id")) for parent in copy.get("parents") or []}:
                self._discard_bad_copy(copy, item)
        if good:
            DRIVE_COPIES_FOUND.inc()
            log.info("%s is in Drive already (an earlier answer was lost)", printable(item.name))
        return good

    def _discard_bad_copy(self, copy: GoogleDriveFile, item: UploadItem) -> None:
        try:
            self._session.ready()
            copy.Delete()
        except Exception as exc:  # the next attempt looks the copy up and tries again
            log.warning(
                "cannot delete a bad Drive copy of %s: %s",
                printable(item.name),
                classify(exc).text,
            )

    def _sorted(self, exc: Exception, item: UploadItem) -> UploadRetryError | UploadRefusedError:
        failure = classify(exc)
        DRIVE_ERRORS.labels(failure.kind).inc()
        if failure.kind == "not_found":
            # Most likely a folder was deleted in Drive: find or make them again.
            self._folders.clear()
            failure = DriveFailure("not_found", True, failure.text, failure.status)
        if failure.kind == "revoked":
            self._access.failed(f"{failure.text} (uploads wait until then)", failure.kind)
        elif failure.kind in ("credentials", "folder_missing"):
            self._access.failed(f"{failure.text} (uploads wait until it is fixed)", failure.kind)
        else:
            log.warning("Drive upload of %s failed: %s", printable(item.name), failure.text)
        if not failure.retry:
            with self._lock:
                self._maybe_sent.discard(_sent_key(item))  # parked: never tried again here
            return UploadRefusedError(failure.text)
        return UploadRetryError(failure.text, self._backoff(failure))

    def _backoff(self, failure: DriveFailure) -> float | None:
        if not failure.rate_limited:
            return None
        with self._lock:
            self._rate_limited += 1
            streak = self._rate_limited
        if failure.retry_after is not None:
            return failure.retry_after
        return self._rate_limit.delay(streak)

    def archive(
        self, now: float, max_moves: int | None = None, *, create_folder: bool = True
    ) -> ArchiveSummary:
        """Run the archiver once now; raises :class:`DriveArchiveError` if it stops early
        (or, with ``create_folder`` false, if the top folder does not exist)."""
        try:
            self._session.ready()
            if create_folder:
                top = str(self.folder()["id"])
            else:
                top = str(self._folders.folder(self.folder_title, create=False)["id"])
        except Exception as exc:
            failure = classify(exc)
            DRIVE_ERRORS.labels(failure.kind).inc()
            raise DriveArchiveError(
                f"archive not started: {failure.text}", ArchiveSummary(), failure.kind
            ) from None
        return DriveArchiver(
            self._session, top, self._archive_after_hours, self._archive_page_size
        ).run(now, max_moves)

    def housekeeping(self, now: float) -> None:
        """Learn the folder's link if not yet known; run the archive when due."""
        if self._archive_due is not None and now < self._archive_due:
            return
        retry = min(self._archive_interval, _ARCHIVE_RETRY)
        try:
            summary = self.archive(now, _ARCHIVE_MOVES_PER_CALL)
        except DriveArchiveError as exc:
            DRIVE_ERRORS.labels(f"archive_{exc.kind}").inc()
            log.warning("Drive archive: %s; next try in %.0f s", exc, retry)
            self._archive_due = now + retry
            return
        except Exception:  # a bug must not take the uploader's thread down
            DRIVE_ERRORS.labels("archive_unexpected").inc()
            log.exception("Drive archive failed unexpectedly")
            self._archive_due = now + retry
            return
        if summary.moved or summary.remaining:
            log.info("Drive archive: %s", summary.lines()[-1])
        # A backlog left over is taken up at the next call, not a day later.
        self._archive_due = now if summary.remaining else now + self._archive_interval

    def check(self) -> str:
        """Find (or, for a user's consent, make) the top folder: its link, else the reason."""
        try:
            folder = self.folder()
        except Exception as exc:  # every Drive failure, sorted as an upload's would be
            raise RuntimeError(classify(exc).text) from None
        return f"folder at {folder.get('alternateLink') or folder.get('id')}"

    def close(self) -> None:
        self._session.close()


def service_account_note(credentials_file: Path) -> str | None:
    """For check-config: what a service account needs, if the file holds one; None otherwise
    (or if the file is unreadable, which the daemon reports itself)."""
    try:
        data = read_credentials_file(credentials_file)
    except DriveCredentialsError:
        return None
    if data.get("type") != "service_account":
        return None
    email = printable(str(data.get("client_email") or "the service account"))
    return (
        f"GOOGLE_DRIVE_CREDENTIALS is a service account ({email}): it has no storage quota and "
        "owns what it uploads, so GOOGLE_DRIVE_FOLDER must be in a shared drive (Google "
        "Workspace) it is a member of.\n"
        "A folder in a personal My Drive, even shared with it, refuses its uploads "
        "(403 storageQuotaExceeded); with a personal account use snapshot-processor drive-auth."
    )


def from_settings(settings: StorageSettings, aws_region: str | None) -> DriveDestination:
    """Google Drive as configured (GOOGLE_DRIVE_FOLDER set, checked by the settings)."""
    assert settings.google_drive_folder
    assert settings.google_drive_credentials
    return DriveDestination(
        settings.google_drive_folder,
        settings.google_drive_credentials,
        settings.google_drive_api_url,
        settings.drive_archive_after_hours,
        rate_limit=settings.DRIVE_RATE_LIMIT,
    )
