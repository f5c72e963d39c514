"""The archive: files in the Drive folder older than a day move into year/month/day folders.

Files are dated (UTC) by the time in the daemon's names, else by ``createdDate``; starred
files stay. The listing is read whole first (moving shifts the pages), and each move is one
``patch``, so an interrupted run leaves every file moved or not."""

from __future__ import annotations

import logging
import re
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import Counter
from pydrive2.files import GoogleDriveFile

from pylib.observe.logs import printable
from snapshot_processor.storage.drive.errors import classify
from snapshot_processor.storage.drive.folders import FolderCache, quote
from snapshot_processor.storage.drive.session import FOLDER_MIME, DriveSession

log = logging.getLogger(__name__)

ARCHIVE_MOVES = Counter(
    "drive_archive_moved_files_total", "Files the archiver moved into date folders"
)
ARCHIVE_RUNS = Counter("drive_archive_runs_total", "Archive runs by result", ["result"])

# The daemon's snapshot names: ..._20240105T101500.123456Z_<event id>.jpg
_NAME_TIME = re.compile(r"_(\d{8}T\d{6})(?:\.(\d{1,6}))?Z_")


def taken_at(file: GoogleDriveFile) -> tuple[datetime, str]:
    """When a file was taken, and by what: ``("name" | "created")``."""
    title = str(file.get("title") or "")
    match = _NAME_TIME.search(title)
    if match is not None:
        try:
            moment = datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
            fraction = (match[2] or "0").ljust(6, "0")
            return moment.replace(microsecond=int(fraction)), "name"
        except ValueError:
            pass  # a name that only looks like ours: fall back to Drive's date
    created = str(file.get("createdDate") or "")
    return datetime.fromisoformat(created).astimezone(UTC), "created"


@dataclass(frozen=True)
class ArchivedFile:
    """One file moved: its title and the ``YYYY/MM/DD`` folder it went to."""

    file_id: str
    title: str
    folder: str


@dataclass
class ArchiveSummary:
    moved: list[ArchivedFile] = field(default_factory=list)
    starred: int = 0
    recent: int = 0
    remaining: int = 0
    folders_created: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines: one per date folder, then a total."""
        per_folder = Tally(moved.folder for moved in self.moved)
        out = [f"{folder}: {count} file(s)" for folder, count in sorted(per_folder.items())]
        out += [f"created folder {folder}" for folder in self.folders_created]
        total = (
            f"moved {len(self.moved)} file(s); kept {self.starred} starred and {self.recent} recent"
        )
        if self.remaining:
            total += f"; {self.remaining} left for the next run"
        out.append(total)
        return out


class DriveArchiveError(Exception):
    """A run stopped early; ``summary`` says what it did before. Running again resumes."""

    def __init__(self, message: str, summary: ArchiveSummary, kind: str) -> None:
        super().__init__(message)
        self.summary = summary
        self.kind = kind


class DriveArchiver:
    """Files the top folder's old files into ``YYYY/MM/DD`` folders under it."""

    def __init__(
        self, session: DriveSession, top_folder_id: str, after_hours: float, page_size: int = 100
    ) -> None:
        self._session = session
        self._top = top_folder_id
        self._after_seconds = after_hours * 3600.0
        self._page_size = page_size

    def run(self, now: float, max_moves: int | None = None) -> ArchiveSummary:
        """Move what is due, at most ``max_moves`` (the rest stay for the next run); raises
        :class:`DriveArchiveError` if Drive fails on the way."""
        summary = ArchiveSummary()
        folders = FolderCache(self._session)
        try:
            due = self._due(now, summary)
            if max_moves is not None and len(due) > max_moves:
                summary.remaining = len(due) - max_moves
                due = due[:max_moves]
            for file, moment in due:
                self._move(file, moment, folders, summary)
        except Exception as exc:
            failure = classify(exc)
            ARCHIVE_RUNS.labels("failed").inc()
            raise DriveArchiveError(
                f"archive stopped after {len(summary.moved)} move(s): {failure.text}",
                summary,
                failure.kind,
            ) from None
        ARCHIVE_RUNS.labels("ok").inc()
        return summary

    def _due(self, now: float, summary: ArchiveSummary) -> list[tuple[GoogleDriveFile, datetime]]:
        q = (
            f"{quote(self._top)} in parents and trashed = false"
            f" and mimeType != {quote(FOLDER_MIME)}"
        )
        due = []
        for file in self._session.list_files(q, self._page_size):
            if (file.get("labels") or {}).get("starred"):
                summary.starred += 1
                continue
            moment, _ = taken_at(file)
            if now - moment.timestamp() < self._after_seconds:
                summary.recent += 1
                continue
            due.append((file, moment))
        due.sort(key=lambda pair: pair[1])
        return due

    def _move(
        self,
        file: GoogleDriveFile,
        moment: datetime,
        folders: FolderCache,
        summary: ArchiveSummary,
    ) -> None:
        parent = self._top
        path = []
        for part in (f"{moment:%Y}", f"{moment:%m}", f"{moment:%d}"):
            path.append(part)
            before = len(folders.created)
            parent = folders.folder(part, parent)["id"]
            if len(folders.created) > before:
                summary.folders_created.append("/".join(path))
        self._session.ready()
        file.Upload(param={"addParents": parent, "removeParents": self._top})
        folder = "/".join(path)
        summary.moved.append(ArchivedFile(str(file["id"]), str(file["title"]), folder))
        ARCHIVE_MOVES.inc()
        log.debug("archived %s into %s", printable(file["title"]), folder)
