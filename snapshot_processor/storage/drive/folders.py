"""Find or create Drive folders by title without ever making two of one name: titles are
not unique in Drive, so look-up-or-create runs under one lock and ids are kept; of
duplicates made elsewhere the oldest wins, so every run picks the same one."""

from __future__ import annotations

import logging
import threading

from pydrive2.files import GoogleDriveFile

from pylib.observe.logs import printable
from snapshot_processor.storage.drive.errors import DriveFolderMissingError
from snapshot_processor.storage.drive.session import FOLDER_MIME, DriveSession

log = logging.getLogger(__name__)


# Folder ids kept at most.
_KEPT = 4096


def quote(text: str) -> str:
    """``text`` as a quoted string in a Drive ``q``."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rank(folder: GoogleDriveFile) -> tuple[int, str, str]:
    in_root = any(parent.get("isRoot") for parent in folder.get("parents") or [])
    return (0 if in_root else 1, str(folder.get("createdDate") or ""), str(folder["id"]))


class FolderCache:
    """Folder ids by (parent, title), found or created once each."""

    def __init__(self, session: DriveSession) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._ids: dict[tuple[str | None, str], GoogleDriveFile] = {}
        #: Titles of the folders this cache created, in order.
        self.created: list[str] = []

    def folder(
        self, title: str, parent: str | None = None, *, create: bool = True
    ) -> GoogleDriveFile:
        """The folder ``title`` in ``parent`` (None: anywhere visible, created in root if absent);
        with ``create`` false a missing one raises :class:`DriveFolderMissingError`."""
        key = (parent, title)
        with self._lock:
            found = self._ids.get(key)
            if found is None:
                found = self._find(title, parent)
                if found is None and not create:
                    raise DriveFolderMissingError(
                        f"no Drive folder titled {printable(title)!r} is visible to these credentials"
                    )
                found = found or self._create(title, parent)
                self._ids[key] = found
                while len(self._ids) > _KEPT:  # a folder per bundle: the oldest are looked up again
                    del self._ids[next(iter(self._ids))]
            return found

    def clear(self) -> None:
        """Forget every folder id (one of them turned out to be gone)."""
        with self._lock:
            self._ids.clear()

    def _find(self, title: str, parent: str | None) -> GoogleDriveFile | None:
        q = f"title = {quote(title)} and mimeType = {quote(FOLDER_MIME)} and trashed = false"
        extra = {}
        if parent is not None:
            q += f" and {quote(parent)} in parents"
        else:
            extra = {"corpora": "allDrives"}
        found = list(self._session.list_files(q, 100, **extra))
        if not found:
            return None
        found.sort(key=_rank)
        if len(found) > 1:
            log.warning(
                "Drive has %d folders titled %s in one place; using the oldest, %s",
                len(found),
                printable(title),
                found[0]["id"],
            )
        return found[0]

    def _create(self, title: str, parent: str | None) -> GoogleDriveFile:
        drive = self._session.ready()
        metadata: dict[str, object] = {"title": title, "mimeType": FOLDER_MIME}
        if parent is not None:
            metadata["parents"] = [{"id": parent}]
        folder = drive.CreateFile(metadata)
        folder.Upload()
        self.created.append(title)
        log.info("created Drive folder %s (%s)", printable(title), folder["id"])
        return folder
