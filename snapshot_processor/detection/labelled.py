"""The labelled set: images with a person's verdict (``person`` / ``not_person``), kept under
``<SNAPSHOTS_ROOT_DIR>/labelled/`` to measure a detection configuration against, and the
feedback that fills it from the page, the bus and Home Assistant.

Each verdict copies the event's original image (never the annotated copy) to ``images/``
and records it, with what detection said then, in ``labelled.sqlite3`` (durable); a second
verdict on the same event replaces the first, and the oldest go once there are ``limit``."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client import Counter, Gauge

from pylib.observe.logs import printable
from pylib.sqlite_file import connect_durable, is_damaged, move_aside, transaction
from snapshot_processor.ops.recent import EventRecord, RecentEvents
from snapshot_processor.ops.routes import read_under
from snapshot_processor.storage.files import sync_folder, write_atomically

log = logging.getLogger(__name__)

PERSON: Final = "person"
NOT_PERSON: Final = "not_person"
VERDICTS: Final = (PERSON, NOT_PERSON)
# Where a verdict came from (the counters' label values).
SOURCES: Final = ("bus", "page", "home_assistant")
# Why a verdict was refused (the counter's label values).
REFUSALS: Final = (
    "unknown_verdict",
    "unknown_event",
    "image_gone",
    "recent_unreadable",
    "store_failed",
)

LABELLED_DIR: Final = "labelled"
DATABASE: Final = "labelled.sqlite3"
IMAGES_DIR: Final = "images"

DETECTION_FEEDBACK = Counter(
    "detection_feedback_total",
    "Verdicts on events stored in the labelled set",
    ["source", "verdict"],
)
DETECTION_FEEDBACK_REFUSED = Counter(
    "detection_feedback_refused_total", "Verdicts on events refused, and why", ["source", "reason"]
)
DETECTION_LABELLED = Gauge("detection_labelled_images", "Images in the labelled set")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS labelled (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " event_id TEXT NOT NULL UNIQUE, verdict TEXT NOT NULL, camera TEXT NOT NULL,"
    " taken REAL NOT NULL, labelled_at REAL NOT NULL, source TEXT NOT NULL,"
    " decided_by TEXT, detections TEXT NOT NULL, file TEXT NOT NULL)"
)
_COLUMNS = "event_id, verdict, camera, taken, labelled_at, source, decided_by, detections, file"
_SHOWN_ID = 80  # an event id from outside is cut to this in messages


def folder(data_root: Path) -> Path:
    """The labelled set's folder in the data root."""
    return data_root / LABELLED_DIR


@dataclass(frozen=True)
class Labelled:
    """One labelled image: the verdict, the event it came from and what detection said
    then (``decided_by``, ``detections`` as events carry them); ``path`` is its copy."""

    event_id: str
    verdict: str
    camera: str
    taken: float
    labelled_at: float
    source: str
    decided_by: str | None
    detections: list[dict[str, Any]]
    path: Path

    @property
    def person(self) -> bool:
        """The verdict: a person is in the image."""
        return self.verdict == PERSON


class LabelledSetError(OSError):
    """The labelled set's file or folder cannot be read or written (a disk's trouble, so an
    OSError: the bus delivers the verdict again later)."""


class LabelledSet:
    """At most ``limit`` labelled images under ``<root>/labelled/`` (``root`` is the data
    root); safe from any thread of the daemon, which alone writes it."""

    def __init__(self, root: Path, limit: int, *, clock: Callable[[], float] = time.time) -> None:
        if limit < 1:
            raise ValueError(f"the labelled set's limit must be at least 1, not {limit}")
        self.root = root
        self.folder = folder(root)
        self.images = self.folder / IMAGES_DIR
        self.path = self.folder / DATABASE
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise LabelledSetError(f"the labelled set {self.path}: {exc}") from None
        try:
            gone = self._trim()
            self._sweep()
        except (OSError, sqlite3.Error) as exc:
            self._db.close()
            raise LabelledSetError(f"the labelled set {self.path}: {exc}") from None
        if gone:
            log.info("labelled set: %d oldest image(s) removed (limit %d)", gone, limit)
        DETECTION_LABELLED.set(self.count())

    def _open(self) -> sqlite3.Connection:
        try:
            db = connect_durable(self.path, "labelled set")
        except sqlite3.DatabaseError as exc:
            # The images alone are no labels: a damaged file is set aside, the set starts over.
            if not is_damaged(exc):
                raise
            aside = move_aside(self.path)
            log.warning("labelled set: %s was damaged (%s); set aside as %s", self.path, exc, aside)
            db = connect_durable(self.path, "labelled set")
        try:
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _image_name(self, event_id: str) -> str:
        # Named by the event, so a second verdict's copy takes the first one's place.
        return hashlib.sha256(event_id.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".jpg"

    def add(
        self,
        *,
        event_id: str,
        verdict: str,
        camera: str,
        taken: float,
        source: str,
        decided_by: str | None,
        detections: Sequence[dict[str, Any]],
        image: bytes,
    ) -> bool:
        """Store one verdict with its image; True if it replaced one on the same event.
        Raises :class:`LabelledSetError` (nothing changed but perhaps the image's bytes)."""
        if verdict not in VERDICTS:
            raise ValueError(f"no such verdict {verdict!r}")
        name = self._image_name(event_id)
        row = (
            event_id,
            verdict,
            camera,
            float(taken),
            self.clock(),
            source,
            decided_by,
            json.dumps(list(detections), default=str),
            name,
        )
        with self._lock:
            try:
                write_atomically(self.images / name, image)
                with transaction(self._db) as db:
                    replaced = db.execute(
                        "DELETE FROM labelled WHERE event_id = ?", (event_id,)
                    ).rowcount
                    db.execute(
                        f"INSERT INTO labelled ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row
                    )
                self._trim()
            except (OSError, sqlite3.Error) as exc:
                self._forget_orphan(name)
                raise LabelledSetError(f"the labelled set {self.path}: {exc}") from None
            count = self._count()
        DETECTION_LABELLED.set(count)
        return bool(replaced)

    def _trim(self) -> int:
        """Remove the oldest rows past the limit, then their images (with the lock held)."""
        with transaction(self._db) as db:
            old = db.execute(
                "SELECT seq, file FROM labelled ORDER BY seq DESC LIMIT -1 OFFSET ?",
                (self.limit,),
            ).fetchall()
            db.executemany("DELETE FROM labelled WHERE seq = ?", [(seq,) for seq, _ in old])
        for _, name in old:
            (self.images / name).unlink(missing_ok=True)
        if old:
            sync_folder(self.images)
        return len(old)

    def _sweep(self) -> None:
        """Remove images no row names: a crash between an image and its row leaves one."""
        named = {row[0] for row in self._db.execute("SELECT file FROM labelled")}
        for entry in os.scandir(self.images):
            if entry.name not in named and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)

    def _forget_orphan(self, name: str) -> None:
        try:
            if self._db.execute("SELECT 1 FROM labelled WHERE file = ?", (name,)).fetchone():
                return  # an earlier verdict's image: kept with its row
            (self.images / name).unlink(missing_ok=True)
        except (OSError, sqlite3.Error) as exc:
            log.warning("labelled set: %s not removed: %s", name, exc)

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM labelled").fetchone()[0])

    def count(self) -> int:
        """The labelled images."""
        with self._lock:
            try:
                return self._count()
            except sqlite3.Error as exc:
                raise LabelledSetError(f"the labelled set {self.path}: {exc}") from None

    def entries(self) -> list[Labelled]:
        """Every labelled image, the oldest first."""
        with self._lock:
            try:
                return _entries(self._db, self.images)
            except sqlite3.Error as exc:
                raise LabelledSetError(f"the labelled set {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _entries(db: sqlite3.Connection, images: Path) -> list[Labelled]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM labelled ORDER BY seq").fetchall()
    return [
        Labelled(
            event_id=event_id,
            verdict=verdict,
            camera=camera,
            taken=float(taken),
            labelled_at=float(labelled_at),
            source=source,
            decided_by=decided_by,
            detections=list(json.loads(detections)),
            path=images / name,
        )
        for event_id, verdict, camera, taken, labelled_at, source, decided_by, detections, name in rows
    ]


def _read_only(data_root: Path) -> sqlite3.Connection | None:
    path = folder(data_root) / DATABASE
    if not path.is_file():
        return None
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)


def read_entries(data_root: Path) -> list[Labelled]:
    """The labelled set of ``data_root``, the oldest first, read without changing anything
    (while the daemon writes it); none when there is no set. Raises :class:`LabelledSetError`."""
    path = folder(data_root) / DATABASE
    try:
        db = _read_only(data_root)
        if db is None:
            return []
        try:
            return _entries(db, folder(data_root) / IMAGES_DIR)
        finally:
            db.close()
    except (sqlite3.Error, ValueError) as exc:
        raise LabelledSetError(f"the labelled set {path}: {exc}") from None


def count_entries(data_root: Path) -> int:
    """How many images the labelled set of ``data_root`` holds (0 when there is none).
    Raises :class:`LabelledSetError`."""
    path = folder(data_root) / DATABASE
    try:
        db = _read_only(data_root)
        if db is None:
            return 0
        try:
            return int(db.execute("SELECT COUNT(*) FROM labelled").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LabelledSetError(f"the labelled set {path}: {exc}") from None


# --- feedback ------------------------------------------------------------------------------
class FeedbackError(ValueError):
    """A verdict that can never be kept: ``reason`` is one of :data:`REFUSALS` but
    ``store_failed`` (that one is a :class:`LabelledSetError`), the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class VerdictError(FeedbackError):
    """The verdict is neither ``person`` nor ``not_person``."""


class EventNotFoundError(FeedbackError, LookupError):
    """The event is not among the recent ones, or its image is no longer on disk."""


class Feedback:
    """Verdicts on recent events, from any thread: the page, the bus, Home Assistant."""

    def __init__(self, labelled: LabelledSet, recent: RecentEvents) -> None:
        self.labelled = labelled
        self.recent = recent

    def record(self, event_id: str, verdict: str, source: str) -> str:
        """Store ``verdict`` on the recent event ``event_id`` with its original image;
        returns a short note (``stored: ...`` or ``replaced: ...``). Raises
        :class:`VerdictError` (a ValueError) for an unknown verdict,
        :class:`EventNotFoundError` (a ValueError and a LookupError) for an event not among
        the recent ones or whose image is gone, :class:`LabelledSetError` (an OSError) or
        sqlite3.Error when the disk failed; each refusal is logged and counted."""
        if source not in SOURCES:
            raise ValueError(f"no such feedback source {source!r}")  # a caller's bug
        shown = printable(str(event_id)[:_SHOWN_ID])
        wanted = verdict.strip().casefold() if isinstance(verdict, str) else ""
        if wanted not in VERDICTS:
            said = printable(str(verdict)[:_SHOWN_ID])
            message = f"the verdict must be 'person' or 'not_person', not '{said}'"
            raise self._refused(VerdictError("unknown_verdict", message), source, shown)
        try:
            record = self.recent.find(event_id)
        except sqlite3.Error as exc:
            self._count_failure("recent_unreadable", source, shown, exc)
            raise
        if record is None:
            message = f"no event '{shown}' among the recent ones (only the newest are kept)"
            raise self._refused(EventNotFoundError("unknown_event", message), source, shown)
        image = self._original(record)
        if image is None:
            message = f"the image of event '{shown}' is no longer on disk (removed by retention?)"
            raise self._refused(EventNotFoundError("image_gone", message), source, shown)
        try:
            replaced = self.labelled.add(
                event_id=record.event_id,
                verdict=wanted,
                camera=record.camera_key,
                taken=record.taken,
                source=source,
                decided_by=record.decided_by,
                detections=record.detections,
                image=image,
            )
        except LabelledSetError as exc:
            self._count_failure("store_failed", source, shown, exc)
            raise
        DETECTION_FEEDBACK.labels(source, wanted).inc()
        what = "replaced" if replaced else "stored"
        words = "a person" if wanted == PERSON else "not a person"
        note = f"{what}: event {shown} ({printable(record.camera_key)}) labelled {words}"
        log.info("detection feedback from %s: %s", source, note)
        return note

    def source(self, name: str) -> Callable[[str, str], str]:
        """``record`` for one source: ``(event_id, verdict) -> note`` (the page's callable)."""
        if name not in SOURCES:
            raise ValueError(f"no such feedback source {name!r}")
        return functools.partial(self._record_from, name)

    def _record_from(self, source: str, event_id: str, verdict: str) -> str:
        return self.record(event_id, verdict, source)

    def _original(self, record: EventRecord) -> bytes | None:
        """The event's own image (never the annotated copy), only from under the data root."""
        if not record.storage_path:
            return None
        return read_under(self.labelled.root, record.storage_path)

    @staticmethod
    def _refused(error: FeedbackError, source: str, shown: str) -> FeedbackError:
        DETECTION_FEEDBACK_REFUSED.labels(source, error.reason).inc()
        log.warning("detection feedback from %s on event %s refused: %s", source, shown, error)
        return error

    @staticmethod
    def _count_failure(reason: str, source: str, shown: str, error: Exception) -> None:
        DETECTION_FEEDBACK_REFUSED.labels(source, reason).inc()
        log.error("detection feedback from %s on event %s not kept: %s", source, shown, error)
