"""A durable, ordered, bounded on-disk outbox for outgoing messages.

A message is on disk (committed, ``synchronous=FULL``) from :meth:`Outbox.append` until the
broker confirms it. Confirmed rows leave the outbox at once (:meth:`Outbox.forget`) and the
disk with the next write, so a message costs one sync; a crash in between publishes them
once more: at least once, never lost. One instance writes (each caches its depth); others
may read the file (WAL mode). A damaged file is moved to ``<name>.damaged-<UTC time>``
(with its ``-wal`` and ``-shm``; its messages stay there, unpublished) and replaced."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from pylib.chain.attachment import Attachment, AttachmentError
from pylib.sqlite_file import is_damaged, move_aside, transaction

logger = logging.getLogger(__name__)

OUTBOX_DEPTH = Gauge("outbox_depth", "Messages in the outbox waiting for a broker confirm.")
OUTBOX_PARKED = Counter(
    "outbox_parked_total", "Messages set aside in the parked table: the broker will never take them"
)
OUTBOX_DAMAGED = Counter(
    "outbox_damaged_total", "Damaged outbox files moved aside and replaced by a fresh one"
)

# Depths worth a WARNING on the way up, besides every 10% of the limit. Not a few: events
# are stored and confirmed in groups, so a few dozen waiting is a daemon at work.
_FIXED_THRESHOLDS = (100, 1000)

_BUSY_TIMEOUT_SECONDS = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    created REAL NOT NULL,
    file TEXT,
    file_offset INTEGER,
    file_size INTEGER,
    file_crc INTEGER
)
"""

_PARKED_SCHEMA = """
CREATE TABLE IF NOT EXISTS parked (
    id INTEGER PRIMARY KEY,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    created REAL NOT NULL,
    parked REAL NOT NULL,
    reason TEXT NOT NULL,
    file TEXT,
    file_offset INTEGER,
    file_size INTEGER,
    file_crc INTEGER
)
"""

SCHEMA_VERSION = 2
# Added after the first release: an older file gets them on open.
_FILE_COLUMNS = (
    ("file", "TEXT"),
    ("file_offset", "INTEGER"),
    ("file_size", "INTEGER"),
    ("file_crc", "INTEGER"),
)
_FILE_FIELDS = "file, file_offset, file_size, file_crc"
_ROW = f"id, exchange, routing_key, body, headers, created, {_FILE_FIELDS}"
_INSERT = (
    f"INSERT INTO outbox (exchange, routing_key, body, headers, created, {_FILE_FIELDS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class OutboxError(Exception):
    """The outbox database cannot be opened, read or written.
    ``damaged``: the file is corrupt or not a database; only :meth:`Outbox.set_aside` helps."""

    def __init__(self, message: str, *, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


def _error(message: str, exc: sqlite3.Error) -> OutboxError:
    return OutboxError(f"{message}: {exc}", damaged=is_damaged(exc))


class OutboxFullError(OutboxError):
    """The outbox holds ``max_entries`` messages; nothing more fits until some are removed."""


@dataclass(frozen=True)
class OutboxEntry:
    """One stored message. ``id`` grows monotonically and is never reused.
    With a ``problem`` (its attached file gone or changed) ``body`` is incomplete: never send it."""

    id: int
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str]
    created: float
    attachment: Attachment | None = None
    problem: str | None = None


Message = (
    tuple[str, str, bytes, Mapping[str, str] | None]
    | tuple[str, str, bytes, Mapping[str, str] | None, Attachment | None]
)


class Outbox:
    """An on-disk FIFO of outgoing messages, at most ``max_entries`` deep.
    Opening replaces a damaged file; :class:`OutboxError` for one it cannot open (permissions)."""

    def __init__(self, path: Path, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.path = Path(path)
        self.max_entries = max_entries
        tenths = {math.ceil(max_entries * k / 10) for k in range(1, 10)}
        self._thresholds = tuple(
            sorted(t for t in {*_FIXED_THRESHOLDS, *tenths} if 0 < t < max_entries)
        )
        # Set by a depth WARNING: only then does draining log an INFO (not after every message).
        self._backlog_reported = False
        self._warned_above = 0  # thresholds below it warned about since last empty
        self._conn: sqlite3.Connection | None = None
        self._reopen = False
        self._forgotten: set[int] = set()  # confirmed, out of depth and peek, still on disk
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the directory for outbox {self.path}: {exc}") from exc
        try:
            conn, count = self._open()
        except OutboxError as exc:
            if not exc.damaged:
                raise
            self._move_aside(exc)
            conn, count = self._open()
        self._conn = conn
        self._depth = int(count)
        OUTBOX_DEPTH.set(self._depth)
        if self._depth:
            logger.warning(
                "outbox %s opened with %s message(s) waiting (limit %s)",
                self.path,
                self._depth,
                self.max_entries,
            )
            self._backlog_reported = True
            self._warned_above = max(
                (t + 1 for t in self._thresholds if t < self._depth), default=0
            )

    def _open(self) -> tuple[sqlite3.Connection, int]:
        # isolation_level=None: each statement is committed (and synced) when execute() returns.
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise _error(f"cannot open outbox database {self.path}", exc) from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # Some filesystems cannot do WAL; readers then just block the writer a moment.
                logger.warning("outbox %s runs in journal mode %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            # A bad page found now is set aside at once, not met later in a retry loop.
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise OutboxError(
                    f"outbox database {self.path} is damaged: {'; '.join(problems)}",
                    damaged=True,
                )
            conn.execute(_SCHEMA)
            conn.execute(_PARKED_SCHEMA)
            # 2: rows may name an attached file (drain the outbox before a downgrade).
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for table in ("outbox", "parked"):
                have = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
                for name, kind in _FILE_COLUMNS:
                    if name not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            (count,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise _error(f"outbox database {self.path} is unreadable or corrupt", exc) from exc
        except OutboxError:
            conn.close()
            raise
        return conn, int(count)

    def _move_aside(self, exc: OutboxError) -> Path:
        try:
            aside = move_aside(self.path)
        except OSError as move_exc:
            raise OutboxError(f"{exc}; and it cannot be moved aside: {move_exc}") from move_exc
        OUTBOX_DAMAGED.inc()
        logger.error(
            "outbox %s is damaged (%s); moved it to %s with its data and started a fresh one;"
            " the messages in it are not published",
            self.path,
            exc,
            aside,
        )
        return aside

    def set_aside(self, exc: OutboxError) -> Path:
        """Close the damaged database, move it aside with its data and open a fresh one."""
        self._forgotten.clear()
        self.close()
        # If the move or the open fails (a full disk), the next use tries again.
        self._reopen = True
        aside = self._move_aside(exc)
        self._connection()
        return aside

    @property
    def synchronous(self) -> int:
        """This connection's ``PRAGMA synchronous`` (2 is FULL): what durability it gets."""
        ((level,),) = self._read("PRAGMA synchronous")
        return int(level)

    def park(self, entry_id: int, reason: str) -> bool:
        """Move a message the broker will never take to the ``parked`` table; False if absent."""
        with self._transaction("cannot park a message in") as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO parked ({_ROW}, parked, reason)"
                f" SELECT {_ROW}, ?, ? FROM outbox WHERE id = ?",
                (time.time(), reason, entry_id),
            )
            removed = conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,)).rowcount
        if removed:
            OUTBOX_PARKED.inc()
            self._set_depth(self._depth - removed)
        return removed > 0

    def parked(self) -> list[tuple[OutboxEntry, str]]:
        """The parked messages, oldest first, each with the reason it was parked."""
        rows = self._read(f"SELECT {_ROW}, reason FROM parked ORDER BY id")
        return [(_entry(row), str(row[10])) for row in rows]

    def replay_parked(self, ids: Collection[int] | None = None) -> int:
        """Put parked messages (all, or those with ``ids``) back at the end, as many as fit;
        returns how many. Only while no publisher has this file open (it caches the depth)."""
        wanted = None if ids is None else sorted(set(ids))
        with self._transaction("cannot replay parked messages in") as conn:
            rows = conn.execute(f"SELECT {_ROW} FROM parked ORDER BY id").fetchall()
            if wanted is not None:
                rows = [row for row in rows if row[0] in wanted]
            rows = rows[: self.room]
            for row in rows:
                conn.execute(_INSERT, row[1:])
                conn.execute("DELETE FROM parked WHERE id = ?", (row[0],))
        if rows:
            self._set_depth(self._depth + len(rows))
            logger.info("outbox %s: %d parked message(s) put back", self.path, len(rows))
        return len(rows)

    def discard_parked(self, ids: Collection[int] | None = None) -> int:
        """Delete parked messages (all, or those with ``ids``) for good; returns how many."""
        with self._transaction("cannot discard parked messages in") as conn:
            if ids is None:
                removed = conn.execute("DELETE FROM parked").rowcount
            else:
                removed = sum(
                    conn.execute("DELETE FROM parked WHERE id = ?", (entry_id,)).rowcount
                    for entry_id in set(ids)
                )
        if removed:
            logger.warning("outbox %s: %d parked message(s) discarded", self.path, removed)
        return int(removed)

    def append(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        attachment: Attachment | None = None,
    ) -> int:
        """Store a message durably and return its id; raise :class:`OutboxFullError` when full."""
        if self._depth >= self.max_entries:
            raise OutboxFullError(
                f"outbox {self.path} is full: {self._depth} of {self.max_entries} messages"
            )
        try:
            cursor = self._connection().execute(
                _INSERT, _row(exchange, routing_key, body, headers, attachment, time.time())
            )
        except sqlite3.Error as exc:
            raise _error(f"cannot append to outbox {self.path}", exc) from exc
        entry_id = cursor.lastrowid
        assert entry_id is not None  # an INSERT into a rowid table always sets it
        self._set_depth(self._depth + 1)
        return entry_id

    def append_many(self, messages: Sequence[Message]) -> list[int]:
        """Store several messages in one transaction (one sync to disk); return their ids.
        Each is ``(exchange, routing_key, body, headers[, attachment])``; forgotten rows leave
        the disk in the same transaction. All or nothing: :class:`OutboxFullError` unless all
        fit (:attr:`room`), ``ValueError`` if a body cannot hold its attachment."""
        if not messages:
            return []
        if self._depth + len(messages) > self.max_entries:
            raise OutboxFullError(
                f"outbox {self.path} is full: {self._depth} of {self.max_entries} messages,"
                f" {len(messages)} more do not fit"
            )
        now = time.time()
        rows = [
            _row(exchange, routing_key, body, headers, more[0] if more else None, now)
            for exchange, routing_key, body, headers, *more in messages
        ]
        ids: list[int] = []
        removing = sorted(self._forgotten)
        with self._transaction("cannot append to") as conn:
            self._delete(conn, removing)
            for row in rows:
                cursor = conn.execute(_INSERT, row)
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
        self._forgotten.difference_update(removing)
        self._set_depth(self._depth + len(ids))
        return ids

    @property
    def room(self) -> int:
        return max(0, self.max_entries - self._depth)

    def peek(self, limit: int = 100) -> list[OutboxEntry]:
        """Return up to ``limit`` stored messages, oldest first, without removing them."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        rows = self._read(
            f"SELECT {_ROW} FROM outbox ORDER BY id LIMIT ?", (limit + len(self._forgotten),)
        )
        kept = [row for row in rows if row[0] not in self._forgotten][:limit]
        return [_entry(row) for row in kept]

    def remove(self, entry_id: int) -> None:
        """Delete a message (after its confirm). Removing an unknown id does nothing."""
        try:
            cursor = self._connection().execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
        except sqlite3.Error as exc:
            raise _error(f"cannot remove {entry_id} from outbox {self.path}", exc) from exc
        if entry_id in self._forgotten:
            self._forgotten.discard(entry_id)  # already out of the depth
        elif cursor.rowcount > 0:
            self._set_depth(self._depth - cursor.rowcount)

    def remove_many(self, entry_ids: list[int]) -> None:
        """Delete several messages in one transaction (after their confirms)."""
        self.forget(entry_ids)
        self.commit_removals()

    def forget(self, entry_ids: Collection[int]) -> None:
        """Take stored messages (ids from :meth:`append_many` or :meth:`peek`) out now,
        after their confirms; their rows leave the disk with the next write."""
        new = set(entry_ids) - self._forgotten
        if new:
            self._forgotten.update(new)
            self._set_depth(self._depth - len(new))

    @property
    def removals_pending(self) -> int:
        """Forgotten messages whose rows are still on disk."""
        return len(self._forgotten)

    def commit_removals(self) -> None:
        """Delete the forgotten rows from disk now, in one transaction; on OutboxError they stay."""
        if not self._forgotten:
            return
        removing = sorted(self._forgotten)
        with self._transaction("cannot remove from") as conn:
            self._delete(conn, removing)
        self._forgotten.difference_update(removing)

    @staticmethod
    def _delete(conn: sqlite3.Connection, entry_ids: list[int]) -> None:
        if entry_ids:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in entry_ids])

    def __len__(self) -> int:
        return self._depth

    def close(self) -> None:
        """Close the database, with the forgotten rows off the disk if it can be written
        (if not, the next start publishes them once more). Closing twice is harmless."""
        self._reopen = False
        if self._conn is not None and self._forgotten:
            try:
                self.commit_removals()
            except OutboxError as exc:
                logger.warning(
                    "outbox %s: %d published message(s) stay on disk and go out once more"
                    " at the next start: %s",
                    self.path,
                    len(self._forgotten),
                    exc,
                )
        self._forgotten.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        try:
            with transaction(self._connection()) as conn:
                yield conn
        except sqlite3.Error as exc:
            raise _error(f"{doing} outbox {self.path}", exc) from exc

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _error(f"cannot read outbox {self.path}", exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None and self._reopen:
            self._conn, count = self._open()
            self._reopen = False
            self._forgotten.clear()
            self._set_depth(count)
        if self._conn is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._conn

    def _set_depth(self, depth: int) -> None:
        old, self._depth = self._depth, depth
        OUTBOX_DEPTH.set(depth)
        if depth > old:
            if depth >= self.max_entries > old:
                if self._warned_above <= self.max_entries:
                    logger.warning(
                        "outbox %s is full: %s of %s", self.path, depth, self.max_entries
                    )
                self._warned_above = self.max_entries + 1
                self._backlog_reported = True
            elif any(max(old, self._warned_above) <= t < depth for t in self._thresholds):
                # Once per threshold until drained, not at every crossing.
                self._warned_above = max(t for t in self._thresholds if t < depth) + 1
                logger.warning(
                    "outbox %s holds %s message(s) (limit %s)", self.path, depth, self.max_entries
                )
                self._backlog_reported = True
        elif depth == 0:
            self._warned_above = 0
            if self._backlog_reported:
                logger.info("outbox %s drained", self.path)
                self._backlog_reported = False


def _row(
    exchange: str,
    routing_key: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    attachment: Attachment | None,
    created: float,
) -> tuple[object, ...]:
    """The values of :data:`_INSERT`: the body without its attached bytes, if any."""
    headers_json = json.dumps(dict(headers or {}), sort_keys=True)
    if attachment is not None and not attachment.present():
        # Not on disk as promised (retention may have taken it): the row keeps the whole body.
        attachment = None
    if attachment is None:
        return (exchange, routing_key, bytes(body), headers_json, created, None, None, None, None)
    rest, crc = attachment.cut(bytes(body))
    where = (attachment.path, attachment.offset, attachment.size, crc)
    return (exchange, routing_key, rest, headers_json, created, *where)


def _entry(row: tuple[object, ...]) -> OutboxEntry:
    """A row as an entry, its body whole again (or with the ``problem`` that prevents it)."""
    headers = json.loads(str(row[4]))
    body = bytes(row[3])  # type: ignore[call-overload]
    attachment, problem = None, None
    if row[6] is not None:
        try:
            attachment = Attachment(str(row[6]), int(str(row[7])), int(str(row[8])))
            body = attachment.splice(body, int(str(row[9])))
        except (AttachmentError, ValueError) as exc:
            problem = f"its attached file cannot be read back: {exc}"
    return OutboxEntry(
        id=int(str(row[0])),
        exchange=str(row[1]),
        routing_key=str(row[2]),
        body=body,
        headers={str(k): str(v) for k, v in headers.items()},
        created=float(str(row[5])),
        attachment=attachment,
        problem=problem,
    )


def attached_files(path: Path) -> set[str]:
    """The files that messages in the outbox at ``path`` (waiting or parked) still need.
    Read-only, any thread or process; none for a missing outbox. :class:`OutboxError` if it
    cannot be read, so retention deletes nothing rather than too much."""
    if not Path(path).exists():
        return set()
    try:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_SECONDS
        )
    except sqlite3.Error as exc:
        raise _error(f"cannot open outbox {path}", exc) from exc
    try:
        tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master")}
        found: set[str] = set()
        for table in ("outbox", "parked"):
            if table not in tables:
                continue
            columns = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
            if "file" in columns:
                query = f"SELECT file FROM {table} WHERE file IS NOT NULL"
                found.update(str(name) for (name,) in conn.execute(query))
        return found
    except sqlite3.Error as exc:
        raise _error(f"cannot read outbox {path}", exc) from exc
    finally:
        conn.close()
