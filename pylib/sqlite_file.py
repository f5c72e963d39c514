"""Durable SQLite connections, and telling and moving aside a damaged file (not retrying it)."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

BUSY_TIMEOUT_SECONDS = 5.0


class DamagedDatabaseError(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the file damaged (a bad page, a broken index)."""


def is_damaged(exc: sqlite3.Error) -> bool:
    """True when SQLite says the file itself is corrupt or not a database."""
    if isinstance(exc, DamagedDatabaseError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def connect_durable(path: Path, what: str) -> sqlite3.Connection:
    """An autocommit connection (each statement or transaction on disk when it returns), its
    file checked with ``quick_check``; share across threads under a lock. Raises sqlite3.Error."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Some file systems cannot do WAL; it still works, readers just block writers.
            logger.warning("%s %s runs in journal mode %s, not wal", what, path, mode)
        conn.execute("PRAGMA synchronous=FULL")
        # A bad page found now is set aside at once, not met later in a retry loop.
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise DamagedDatabaseError(f"{what} {path} is damaged: {'; '.join(problems)}")
    except BaseException:
        conn.close()
        raise
    return conn


def move_aside(path: Path) -> Path:
    """Rename a damaged database with its ``-wal`` and ``-shm`` to ``<name>.damaged-<UTC time>``;
    return the new path. Raises :class:`OSError`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for n in itertools.count(1):  # never over an earlier one from the same second
        if not aside.exists():
            break
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for extra in ("", "-wal", "-shm"):
        source = path.with_name(path.name + extra)
        if source.exists():
            source.rename(aside.with_name(aside.name + extra))
    return aside


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction, committed at the end, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
