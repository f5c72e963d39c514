"""What a cloud destination promises the uploader: one file in, a link out, errors sorted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class UploadItem:
    """One local file to copy: its unique ``name`` there, a ``folder`` beside its kind (a
    camera's key), and when it was ``taken`` (unix seconds, UTC). Files of one ``group``
    share one folder at the destination, named by the group (a relative path); a higher
    ``priority`` goes ahead of everything queued."""

    path: Path
    name: str
    folder: str
    taken: float
    group: str | None = None
    priority: int = 0


class UploadRetryError(Exception):
    """The upload failed in a way that may pass; try again, after ``after`` seconds if set."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after


class UploadRefusedError(Exception):
    """The upload can never succeed as it is; park the item and count it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Destination(Protocol):
    """A place files are copied to (Google Drive, S3)."""

    #: Short and stable ("drive", "s3"): the upload queue's column, metric labels, logs.
    name: str
    #: Whether :meth:`link` knows a group's folder before anything of it is uploaded.
    links_ahead: bool

    def link(self, item: UploadItem) -> str | None:
        """The link a person opens for this item (its group's folder, for an item of a
        group), without touching the network."""

    def upload(self, item: UploadItem) -> None:
        """Copy the file; raise :class:`UploadRetryError` or :class:`UploadRefusedError` on failure."""

    def housekeeping(self, now: float) -> None:
        """Periodic work on the uploader's thread between uploads (Drive's daily archive)."""

    def close(self) -> None:
        """Release connections; called once, on the uploader's thread, at stop."""
