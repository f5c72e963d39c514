"""A durable queue of files to copy to cloud destinations, shared by the daemon's threads.
A *parked* item (out of attempts, or refused) is never tried again on its own, but still
:meth:`UploadQueue.holds` its file, so local retention never removes one not safely copied."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prometheus_client import Counter, Gauge

from pylib.sqlite_file import connect_durable, is_damaged, move_aside, transaction
from pylib.upload.destination import UploadItem

logger = logging.getLogger(__name__)

UPLOAD_QUEUE_DEPTH = Gauge(
    "upload_queue_depth", "Uploads waiting in the queue (parked ones not included)"
)
UPLOAD_QUEUE_OLDEST = Gauge(
    "upload_queue_oldest_seconds", "Age of the oldest upload waiting in the queue (0 if none)"
)
UPLOAD_QUEUE_PARKED = Gauge(
    "upload_queue_parked", "Uploads parked in the queue: refused or out of attempts"
)
UPLOAD_QUEUE_DAMAGED = Counter(
    "upload_queue_damaged_total", "Damaged upload queue files moved aside and replaced"
)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS uploads (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        path TEXT NOT NULL,
        name TEXT NOT NULL,
        folder TEXT NOT NULL,
        taken REAL NOT NULL,
        added REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL,
        parked REAL,
        reason TEXT,
        grp TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        UNIQUE (destination, path)
    )
    """,
    "CREATE INDEX IF NOT EXISTS uploads_due ON uploads (parked, next_try)",
)
# Columns added since the first queues were written: added to an older file when opened.
_ADDED_COLUMNS = {"grp": "grp TEXT", "priority": "priority INTEGER NOT NULL DEFAULT 0"}
# The ``folder`` column's name in queues written before it had its general one.
_OLD_FOLDER_COLUMN = "camera_key"
_COLUMNS = (
    "id, destination, path, name, folder, taken, added, attempts, next_try, parked, reason,"
    " grp, priority"
)


class UploadQueueError(Exception):
    """The queue file cannot be opened, read or written; the message names it. ``damaged``:
    the file was replaced by a fresh one, so trying again works."""

    def __init__(self, message: str, *, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


@dataclass(frozen=True)
class QueuedUpload:
    """One queued upload: ``attempts`` failed so far; ``added`` is when it was queued."""

    id: int
    destination: str
    item: UploadItem
    attempts: int
    added: float


class UploadQueue:
    """The on-disk queue of uploads; thread-safe. Raises :class:`UploadQueueError` if unopenable."""

    def __init__(self, path: Path, *, max_attempts: int) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._last = (0, 0.0, 0)  # depth, oldest age, parked: for a scrape after close
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UploadQueueError(
                f"cannot create the folder of upload queue {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            self._conn = self._open()
        except sqlite3.Error as exc:
            if not is_damaged(exc):
                raise UploadQueueError(f"cannot open upload queue {self.path}: {exc}") from None
            self._conn = self._replace_damaged(exc)
        depth = self.depth()
        if depth:
            logger.info("upload queue %s opened with %d upload(s) waiting", self.path, depth)
        # Computed on each scrape, so the oldest age grows while the uploader sleeps.
        UPLOAD_QUEUE_DEPTH.set_function(lambda: self._stats()[0])
        UPLOAD_QUEUE_OLDEST.set_function(lambda: self._stats()[1])
        UPLOAD_QUEUE_PARKED.set_function(lambda: self._stats()[2])

    def add(self, entries: Iterable[tuple[str, UploadItem]]) -> None:
        """Queue each ``(destination, item)``, due now, durably; one already queued stays as is."""
        now = time.time()
        rows = [
            (
                destination,
                _key(item.path),
                item.name,
                item.folder,
                float(item.taken),
                now,
                now,
                item.group,
                item.priority,
            )
            for destination, item in entries
        ]
        if not rows:
            return
        with self._transaction("cannot add to") as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO uploads"
                " (destination, path, name, folder, taken, added, next_try, grp, priority)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def done(self, upload_id: int) -> bool:
        """The upload succeeded: forget it. False if it was not queued."""
        with self._transaction("cannot finish an upload in") as conn:
            return conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)).rowcount > 0

    def retry(self, upload_id: int, reason: str, at: float) -> bool:
        """Count a failed attempt, due again at ``at``; parked (True) after ``max_attempts``."""
        with self._transaction("cannot reschedule an upload in") as conn:
            row = conn.execute(
                "UPDATE uploads SET attempts = attempts + 1, reason = ?, next_try = ?,"
                " parked = CASE WHEN attempts + 1 >= ? THEN ? ELSE NULL END"
                " WHERE id = ? AND parked IS NULL RETURNING parked",
                (reason, at, self.max_attempts, time.time(), upload_id),
            ).fetchone()
        return row is not None and row[0] is not None

    def park(self, upload_id: int, reason: str) -> bool:
        """Set an upload aside for good (its destination refused it). False if absent."""
        with self._transaction("cannot park an upload in") as conn:
            changed = conn.execute(
                "UPDATE uploads SET parked = ?, reason = ? WHERE id = ? AND parked IS NULL",
                (time.time(), reason, upload_id),
            ).rowcount
        return changed > 0

    def requeue_parked(self, destination: str | None = None) -> int:
        """Give parked uploads (of one destination, or all) their attempts back; how many."""
        with self._transaction("cannot requeue parked uploads in") as conn:
            return conn.execute(
                "UPDATE uploads SET parked = NULL, attempts = 0, next_try = ?"
                " WHERE parked IS NOT NULL AND (? IS NULL OR destination = ?)",
                (time.time(), destination, destination),
            ).rowcount

    def all_due_now(self, now: float) -> int:
        """Every waiting upload due at ``now`` (at a start, a person may have mended the cause)."""
        with self._transaction("cannot reschedule uploads in") as conn:
            return conn.execute(
                "UPDATE uploads SET next_try = ? WHERE parked IS NULL AND next_try > ?",
                (now, now),
            ).rowcount

    def due(
        self, now: float, limit: int, destinations: Collection[str] | None = None
    ) -> list[QueuedUpload]:
        """Up to ``limit`` uploads (of ``destinations``) due by ``now``: the highest
        priority first, then the oldest."""
        where, args = _among(destinations)
        rows = self._read(
            f"SELECT {_COLUMNS} FROM uploads WHERE parked IS NULL AND next_try <= ?{where}"
            " ORDER BY priority DESC, id LIMIT ?",
            (now, *args, limit),
        )
        return [_upload(row) for row in rows]

    def next_due(self, destinations: Collection[str] | None = None) -> float | None:
        """When the next upload (of ``destinations``, when given) is due; None if none waits."""
        where, args = _among(destinations)
        ((when,),) = self._read(
            f"SELECT MIN(next_try) FROM uploads WHERE parked IS NULL{where}", tuple(args)
        )
        return None if when is None else float(when)

    def depth(self) -> int:
        """Uploads waiting (parked ones not included)."""
        ((count,),) = self._read("SELECT COUNT(*) FROM uploads WHERE parked IS NULL")
        return int(count)

    def oldest_age(self, now: float) -> float | None:
        """Seconds the oldest waiting upload has waited; None if none waits."""
        ((added,),) = self._read("SELECT MIN(added) FROM uploads WHERE parked IS NULL")
        return None if added is None else max(0.0, now - float(added))

    @property
    def synchronous(self) -> int:
        """This connection's ``PRAGMA synchronous`` (2 is FULL)."""
        ((level,),) = self._read("PRAGMA synchronous")
        return int(level)

    def parked(self, since: float | None = None) -> int:
        """Parked uploads (those parked at or after ``since``, when given)."""
        ((count,),) = self._read(
            "SELECT COUNT(*) FROM uploads WHERE parked IS NOT NULL AND parked >= ?",
            (-math.inf if since is None else since,),
        )
        return int(count)

    def parked_uploads(self, limit: int = 100) -> list[tuple[QueuedUpload, str]]:
        """Parked uploads, oldest first, each with its reason (for a person to look at)."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM uploads WHERE parked IS NOT NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [(_upload(row), str(row[10] or "")) for row in rows]

    def parked_reasons(self, paths: Collection[Path | str]) -> dict[str, str]:
        """Why each of ``paths`` that is parked is, by absolute path: ``<destination>: <reason>``."""
        keys = sorted({_key(path) for path in paths})
        if not keys:
            return {}
        rows = self._read(
            "SELECT path, destination, reason FROM uploads WHERE parked IS NOT NULL"
            f" AND path IN ({', '.join('?' * len(keys))})",
            tuple(keys),
        )
        return {str(path): f"{where}: {why or 'refused'}" for path, where, why in rows}

    def by_destination(self) -> dict[str, int]:
        """Unfinished uploads (parked included) per destination name."""
        rows = self._read("SELECT destination, COUNT(*) FROM uploads GROUP BY destination")
        return {str(name): int(count) for name, count in rows}

    def holds(self, path: Path | str) -> bool:
        """True while an upload of this file is unfinished, parked included."""
        return bool(self._read("SELECT 1 FROM uploads WHERE path = ? LIMIT 1", (_key(path),)))

    def pending_paths(self, destination: str | None = None) -> set[str]:
        """Absolute paths of every file with an unfinished upload (to ``destination``, when
        given), parked included."""
        rows = self._read(
            "SELECT DISTINCT path FROM uploads WHERE ? IS NULL OR destination = ?",
            (destination, destination),
        )
        return {str(path) for (path,) in rows}

    def close(self) -> None:
        """Close the database; closing twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _open(self) -> sqlite3.Connection:
        conn = connect_durable(self.path, "upload queue")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            found = _columns(conn)
            if _OLD_FOLDER_COLUMN in found:
                conn.execute(f"ALTER TABLE uploads RENAME COLUMN {_OLD_FOLDER_COLUMN} TO folder")
            for name, definition in _ADDED_COLUMNS.items():
                if name not in found:
                    conn.execute(f"ALTER TABLE uploads ADD COLUMN {definition}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _replace_damaged(self, exc: sqlite3.Error) -> sqlite3.Connection:
        try:
            aside = move_aside(self.path)
        except OSError as move_exc:
            raise UploadQueueError(
                f"upload queue {self.path} is damaged ({exc}) and cannot be moved aside: {move_exc}"
            ) from None
        UPLOAD_QUEUE_DAMAGED.inc()
        try:
            conn = self._open()
        except sqlite3.Error as again:
            raise UploadQueueError(
                f"upload queue {self.path} was damaged and a fresh one cannot be opened: {again}"
            ) from None
        saved = _salvage(aside, conn)
        logger.error(
            "upload queue %s is damaged (%s); moved it to %s and started a fresh one with the"
            " %d upload(s) that could still be read; files of any others are no longer kept"
            " from local retention",
            self.path,
            exc,
            aside,
            saved,
        )
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UploadQueueError(f"upload queue {self.path} is closed")
        return self._conn

    def _failed(self, doing: str, exc: sqlite3.Error) -> UploadQueueError:
        """The error to raise; a damaged file is replaced first (the lock is held)."""
        if not is_damaged(exc):
            return UploadQueueError(f"{doing} upload queue {self.path}: {exc}")
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._conn = self._replace_damaged(exc)
        return UploadQueueError(f"{doing} upload queue {self.path}: {exc}", damaged=True)

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with transaction(self._connection()) as conn:
                    yield conn
            except sqlite3.Error as exc:
                raise self._failed(doing, exc) from None

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._failed("cannot read", exc) from None

    def _stats(self) -> tuple[int, float, int]:
        """Depth, oldest age and parked count for the gauges; the last ones if unreadable."""
        try:
            age = self.oldest_age(time.time())
            self._last = (self.depth(), 0.0 if age is None else age, self.parked())
        except UploadQueueError:
            pass
        return self._last


def _key(path: Path | str) -> str:
    # Absolute, links not resolved: a link is never followed to somewhere it should not lead.
    return os.path.abspath(path)


def _among(destinations: Collection[str] | None) -> tuple[str, list[str]]:
    if destinations is None:
        return "", []
    names = sorted(destinations)
    if not names:
        return " AND 0", []
    return f" AND destination IN ({', '.join('?' * len(names))})", names


def _upload(row: tuple[object, ...]) -> QueuedUpload:
    return QueuedUpload(
        id=int(str(row[0])),
        destination=str(row[1]),
        item=UploadItem(
            path=Path(str(row[2])),
            name=str(row[3]),
            folder=str(row[4]),
            taken=float(str(row[5])),
            group=None if row[11] is None else str(row[11]),
            priority=int(str(row[12] or 0)),
        ),
        attempts=int(str(row[7])),
        added=float(str(row[6])),
    )


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {str(row[1]) for row in conn.execute("PRAGMA table_info(uploads)")}


def _salvage(aside: Path, fresh: sqlite3.Connection) -> int:
    """Copy the rows that can still be read from a damaged file; how many."""
    try:
        with closing(sqlite3.connect(f"file:{quote(str(aside))}?mode=ro", uri=True)) as old:
            columns = _COLUMNS
            found = _columns(old)
            if _OLD_FOLDER_COLUMN in found:
                columns = columns.replace("folder", f"{_OLD_FOLDER_COLUMN} AS folder")
            for name in _ADDED_COLUMNS:
                if name not in found:
                    columns = columns.replace(name, f"NULL AS {name}", 1)
            rows = old.execute(f"SELECT {columns} FROM uploads ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        logger.warning("nothing could be read back from the damaged %s: %s", aside, exc)
        return 0
    try:
        fresh.execute("BEGIN IMMEDIATE")
        fresh.executemany(
            f"INSERT OR IGNORE INTO uploads ({_COLUMNS}) VALUES ({', '.join('?' * 13)})",
            [(*row[:12], row[12] or 0) for row in rows],
        )
        fresh.execute("COMMIT")
    except sqlite3.Error as exc:
        if fresh.in_transaction:
            fresh.execute("ROLLBACK")
        logger.warning("could not copy the uploads read back from %s: %s", aside, exc)
        return 0
    return len(rows)
