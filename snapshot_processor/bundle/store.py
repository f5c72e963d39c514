"""The bundles on disk (SQLite, beside the upload queue): each bundle's cameras, its files
with their checksums and detections, which destinations hold a verified copy of each, and
its state. It outlives a restart, so a bundle cut short by one is closed at the next start
and no file of it is copied twice."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pylib.sqlite_file import connect_durable, is_damaged, move_aside, transaction

log = logging.getLogger(__name__)

COLLECTING = "collecting"
UPLOADING = "uploading"
SEALED = "sealed"

# What a file is to its bundle.
FRAME = "frame"  # a snapshot: one image event
BEFORE = "before"  # a still from the seconds before the trigger
ANNOTATED = "annotated"  # a frame with its detections drawn
PREVIEW = "preview"  # the small copy of the first frame, sent off-site ahead of the rest
MANIFEST = "manifest"

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS bundles (
        id TEXT PRIMARY KEY,
        grp TEXT NOT NULL,
        sensor TEXT,
        opened REAL NOT NULL,
        state TEXT NOT NULL,
        ended_by TEXT,
        completed REAL,
        announced INTEGER NOT NULL DEFAULT 0,
        first_offsite REAL,
        sealed REAL,
        took INTEGER NOT NULL DEFAULT 0,
        seen INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS bundles_state ON bundles (state)",
    "CREATE INDEX IF NOT EXISTS bundles_group ON bundles (grp)",
    """
    CREATE TABLE IF NOT EXISTS cameras (
        bundle_id TEXT NOT NULL,
        camera TEXT NOT NULL,
        label TEXT NOT NULL,
        expected INTEGER NOT NULL DEFAULT 0,
        bursts INTEGER NOT NULL DEFAULT 0,
        failure TEXT,
        PRIMARY KEY (bundle_id, camera)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS files (
        path TEXT PRIMARY KEY,
        bundle_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        event_id TEXT,
        camera TEXT,
        frame INTEGER,
        taken REAL NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        detections TEXT,
        person REAL,
        seen INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS files_bundle ON files (bundle_id)",
    # The frames not through detection yet: counted after every frame, so kept small.
    "CREATE INDEX IF NOT EXISTS files_unseen ON files (bundle_id) WHERE kind = 'frame' AND seen = 0",
    "CREATE INDEX IF NOT EXISTS files_event ON files (event_id)",
    """
    CREATE TABLE IF NOT EXISTS copies (
        path TEXT NOT NULL,
        destination TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (path, destination)
    )
    """,
)


class BundleStoreError(Exception):
    """The bundle file cannot be opened, read or written; the message names it."""


@dataclass(frozen=True)
class CameraPart:
    """A camera's share of a bundle: frames asked and taken (its frame files), bursts still
    under way, and why it fell short."""

    camera: str
    label: str
    expected: int
    taken: int
    bursts: int
    failure: str | None


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle, with its checksums and (for a frame) its detections."""

    path: str
    kind: str
    event_id: str | None
    camera: str | None
    frame: int | None
    taken: float
    size: int
    sha256: str
    detections: list[dict[str, Any]] | None
    person: float | None
    seen: bool
    copies: dict[str, float] = field(default_factory=dict)  # destination -> when verified


@dataclass(frozen=True)
class Bundle:
    """One bundle as stored, with its cameras and files."""

    bundle_id: str
    group: str
    sensor: str | None
    opened: float
    state: str
    ended_by: str | None
    completed: float | None
    announced: bool
    first_offsite: float | None
    sealed: float | None
    cameras: list[CameraPart]
    files: list[BundleFile]


@dataclass(frozen=True)
class NewFile:
    """A file to record: ``data`` is hashed here (the caller has it in memory already)."""

    bundle_id: str
    path: Path
    kind: str
    taken: float
    data: bytes
    event_id: str | None = None
    camera: str | None = None
    frame: int | None = None


class BundleStore:
    """The bundles file; thread-safe. Raises :class:`BundleStoreError` if it cannot be used."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._open()
        except OSError as exc:
            raise BundleStoreError(f"cannot create bundle file {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            if not is_damaged(exc):
                raise BundleStoreError(f"cannot open bundle file {self.path}: {exc}") from None
            try:
                aside = move_aside(self.path)
                self._conn = self._open()
            except (OSError, sqlite3.Error) as again:
                raise BundleStoreError(
                    f"bundle file {self.path} is damaged ({exc}) and cannot be replaced: {again}"
                ) from None
            log.error(
                "bundle file %s is damaged (%s); moved it to %s and started a fresh one: the"
                " bundles it held are no longer sealed or kept from retention",
                self.path,
                exc,
                aside,
            )

    # --- writes ------------------------------------------------------------------------
    def record(
        self,
        *,
        joined: Iterable[tuple[str, str, float, str | None, str, str, int]] = (),
        files: Iterable[NewFile] = (),
        ended: Iterable[tuple[str, str, str | None, int, int]] = (),
    ) -> int:
        """In one transaction: cameras that ``joined`` a bundle (``bundle_id, group, opened,
        sensor, camera, label, expected``; the bundle is made on its first), new ``files``,
        and bursts that ``ended`` (``bundle_id, camera, failure, unasked`` frames, frames
        ``took``). A bundle no longer collecting takes none of them: how many were turned
        away."""
        rows = [_file_row(new) for new in files]
        late = 0
        with self._transaction("cannot record in") as conn:
            for bundle_id, group, opened, sensor, camera, label, expected in joined:
                conn.execute(
                    "INSERT OR IGNORE INTO bundles (id, grp, sensor, opened, state)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (bundle_id, group, sensor, opened, COLLECTING),
                )
                late += (
                    1
                    - conn.execute(
                        "INSERT INTO cameras (bundle_id, camera, label, expected, bursts)"
                        " SELECT ?, ?, ?, ?, 1 WHERE EXISTS"
                        " (SELECT 1 FROM bundles WHERE id = ? AND state = ?)"
                        " ON CONFLICT (bundle_id, camera) DO UPDATE SET"
                        " expected = expected + excluded.expected, bursts = bursts + 1",
                        (bundle_id, camera, label, expected, bundle_id, COLLECTING),
                    ).rowcount
                )
            late += _insert_files(conn, rows)
            for bundle_id, camera, failure, unasked, took in ended:
                # A frame taken may come after its burst's end (detection holds frames, not
                # the end): the bundle waits for as many frames as its bursts took.
                if not conn.execute(
                    "UPDATE bundles SET took = took + ? WHERE id = ? AND state = ?",
                    (took, bundle_id, COLLECTING),
                ).rowcount:
                    late += 1
                    continue
                conn.execute(
                    "UPDATE cameras SET bursts = MAX(0, bursts - 1),"
                    " expected = MAX(0, expected - ?), failure = COALESCE(?, failure)"
                    " WHERE bundle_id = ? AND camera = ?",
                    (unasked, failure, bundle_id, camera),
                )
        return late

    def saw(
        self,
        frames: Iterable[tuple[str, list[dict[str, Any]] | None, float | None]],
        annotated: Iterable[NewFile] = (),
    ) -> set[str]:
        """Frames came through detection, ``(event_id, detections, person)`` each (detections
        None: not analysed), with their ``annotated`` copies, in one transaction; the ids of
        the bundles they are in."""
        rows = [
            (None if d is None else json.dumps(d, separators=(",", ":")), person, event_id)
            for event_id, d, person in frames
        ]
        copies = [_file_row(new) for new in annotated]
        found: set[str] = set()
        with self._transaction("cannot record detections in") as conn:
            for row in rows:
                hit = conn.execute(
                    "UPDATE files SET seen = 1, detections = ?, person = ?"
                    " WHERE event_id = ? AND kind = 'frame' AND seen = 0 RETURNING bundle_id",
                    row,
                ).fetchone()
                if hit is not None:
                    found.add(str(hit[0]))
                    conn.execute("UPDATE bundles SET seen = seen + 1 WHERE id = ?", (hit[0],))
            _insert_files(conn, copies)
        return found

    def complete(self, bundle_id: str, ended_by: str, now: float, why: str) -> bool:
        """Collecting no more: cameras with a burst still under way are marked failed with
        ``why``. False if it was not collecting (completed already)."""
        with self._transaction("cannot complete a bundle in") as conn:
            changed = conn.execute(
                "UPDATE bundles SET state = ?, ended_by = ?, completed = ?"
                " WHERE id = ? AND state = ?",
                (UPLOADING, ended_by, now, bundle_id, COLLECTING),
            ).rowcount
            if changed:
                conn.execute(
                    "UPDATE cameras SET failure = COALESCE(failure, ?), bursts = 0"
                    " WHERE bundle_id = ? AND bursts > 0",
                    (why, bundle_id),
                )
        return changed > 0

    def announced(self, bundle_id: str) -> None:
        """Its bundle event is stored by the publisher: it is not announced again."""
        with self._transaction("cannot mark a bundle announced in") as conn:
            conn.execute("UPDATE bundles SET announced = 1 WHERE id = ?", (bundle_id,))

    def copied(
        self, path: Path | str, destination: str, group: str, now: float
    ) -> tuple[str, bool] | None:
        """A verified copy of ``path``, a file of the bundle whose folder is ``group``, is at
        ``destination`` (kept even before the file itself is recorded, which may come a
        moment after its upload was queued): the bundle's id, and whether this is its first
        file off-site; None if no such bundle is known."""
        with self._transaction("cannot record a copy in") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO copies (path, destination, at) VALUES (?, ?, ?)",
                (_key(path), destination, now),
            )
            found = conn.execute("SELECT id FROM bundles WHERE grp = ?", (group,)).fetchone()
            if found is None:
                return None
            first = conn.execute(
                "UPDATE bundles SET first_offsite = ? WHERE id = ? AND first_offsite IS NULL",
                (now, found[0]),
            ).rowcount
        return str(found[0]), first > 0

    def add_manifest(self, manifest: NewFile) -> bool:
        """Record the bundle's manifest; False if it has one already (sealing has begun)."""
        with self._transaction("cannot record a manifest in") as conn:
            if conn.execute(
                "SELECT 1 FROM files WHERE bundle_id = ? AND kind = ?",
                (manifest.bundle_id, MANIFEST),
            ).fetchone():
                return False
            conn.execute(
                "INSERT INTO files (path, bundle_id, kind, event_id, camera, frame, taken, size,"
                " sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _file_row(manifest),
            )
        return True

    def seal(self, bundle_id: str, now: float) -> bool:
        """Every file and the manifest are off-site, verified: sealed. False if it was not
        waiting to be."""
        with self._transaction("cannot seal a bundle in") as conn:
            return (
                conn.execute(
                    "UPDATE bundles SET state = ?, sealed = ? WHERE id = ? AND state = ?",
                    (SEALED, now, bundle_id, UPLOADING),
                ).rowcount
                > 0
            )

    def forget_sealed(self, keep: int, now: float) -> int:
        """Forget all but the newest ``keep`` sealed bundles (their files are retention's
        now), and copies of files no bundle took (late ones) after a day; how many bundles
        were forgotten."""
        with self._transaction("cannot forget bundles in") as conn:
            conn.execute(
                "DELETE FROM copies WHERE at < ? AND path NOT IN (SELECT path FROM files)",
                (now - 86_400.0,),
            )
            old = [
                str(row[0])
                for row in conn.execute(
                    "SELECT id FROM bundles WHERE state = ? ORDER BY opened DESC LIMIT -1 OFFSET ?",
                    (SEALED, keep),
                )
            ]
            for bundle_id in old:
                conn.execute(
                    "DELETE FROM copies WHERE path IN (SELECT path FROM files WHERE bundle_id = ?)",
                    (bundle_id,),
                )
                conn.execute("DELETE FROM files WHERE bundle_id = ?", (bundle_id,))
                conn.execute("DELETE FROM cameras WHERE bundle_id = ?", (bundle_id,))
                conn.execute("DELETE FROM bundles WHERE id = ?", (bundle_id,))
        return len(old)

    # --- reads -------------------------------------------------------------------------
    def bundle(self, bundle_id: str) -> Bundle | None:
        """One bundle with its cameras and files (each with its copies), or None."""
        with self._lock:
            rows = self._read(
                "SELECT id, grp, sensor, opened, state, ended_by, completed, announced,"
                " first_offsite, sealed FROM bundles WHERE id = ?",
                (bundle_id,),
            )
            if not rows:
                return None
            cameras = self._read(
                "SELECT c.camera, c.label, c.expected, (SELECT COUNT(*) FROM files f"
                " WHERE f.bundle_id = c.bundle_id AND f.camera = c.camera AND f.kind = 'frame'),"
                " c.bursts, c.failure FROM cameras c WHERE c.bundle_id = ? ORDER BY c.camera",
                (bundle_id,),
            )
            files = self._read(
                "SELECT path, kind, event_id, camera, frame, taken, size, sha256,"
                " detections, person, seen FROM files WHERE bundle_id = ?"
                " ORDER BY camera, frame, kind, taken, path",
                (bundle_id,),
            )
            copies = self._read(
                "SELECT c.path, c.destination, c.at FROM copies c JOIN files f ON f.path = c.path"
                " WHERE f.bundle_id = ?",
                (bundle_id,),
            )
        held: dict[str, dict[str, float]] = {}
        for path, destination, at in copies:
            held.setdefault(str(path), {})[str(destination)] = float(at)
        return _bundle(rows[0], cameras, files, held)

    def ids(self, state: str | None = None, *, announced: bool | None = None) -> list[str]:
        """Bundle ids (in ``state``, announced or not), oldest first."""
        where: list[str] = []
        args: list[object] = []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if announced is not None:
            where.append("announced = ?")
            args.append(1 if announced else 0)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT id FROM bundles{clause} ORDER BY opened", tuple(args))
        return [str(row[0]) for row in rows]

    def recent(self, limit: int) -> list[Bundle]:
        """The newest bundles, newest first."""
        rows = self._read("SELECT id FROM bundles ORDER BY opened DESC LIMIT ?", (limit,))
        return [found for (bundle_id,) in rows if (found := self.bundle(str(bundle_id)))]

    def ready(self, bundle_id: str) -> bool:
        """Collecting, with every camera's bursts ended and as many frames through detection
        as they took (none recorded and still waiting)."""
        # The frame test is written as the partial index's, so the index serves it.
        ((collecting, waiting),) = self._read(
            "SELECT (SELECT COUNT(*) FROM bundles WHERE id = ? AND state = ? AND seen >= took),"
            " (SELECT COUNT(*) FROM cameras WHERE bundle_id = ? AND bursts > 0)"
            " + (SELECT COUNT(*) FROM files WHERE bundle_id = ? AND kind = 'frame' AND seen = 0)",
            (bundle_id, COLLECTING, bundle_id, bundle_id),
        )
        return bool(collecting) and int(waiting) == 0

    def unsealed_paths(self) -> set[str]:
        """Every file of a bundle not sealed yet: retention keeps them."""
        rows = self._read(
            "SELECT f.path FROM files f JOIN bundles b ON b.id = f.bundle_id WHERE b.state != ?",
            (SEALED,),
        )
        return {str(path) for (path,) in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- inside ------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = connect_durable(self.path, "bundle file")
        try:
            # A commit survives the process being killed without waiting for the disk (WAL):
            # what must survive power loss too, the upload queue and the outbox, waits there.
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BundleStoreError(f"bundle file {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with transaction(self._connection()) as conn:
                    yield conn
            except sqlite3.Error as exc:
                raise BundleStoreError(f"{doing} bundle file {self.path}: {exc}") from None

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise BundleStoreError(f"cannot read bundle file {self.path}: {exc}") from None


def _key(path: Path | str) -> str:
    # As the upload queue keys its files: absolute, links not resolved.
    return os.path.abspath(path)


def _insert_files(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> int:
    """Insert file rows into bundles still collecting; how many were turned away."""
    late = 0
    for row in rows:
        late += (
            1
            - conn.execute(
                "INSERT OR IGNORE INTO files (path, bundle_id, kind, event_id, camera, frame, taken,"
                " size, sha256) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM bundles WHERE id = ? AND state = ?)",
                (*row, row[1], COLLECTING),
            ).rowcount
        )
    return late


def _file_row(new: NewFile) -> tuple[object, ...]:
    return (
        _key(new.path),
        new.bundle_id,
        new.kind,
        new.event_id,
        new.camera,
        new.frame,
        new.taken,
        len(new.data),
        hashlib.sha256(new.data).hexdigest(),
    )


def _bundle(
    row: tuple[Any, ...],
    cameras: Collection[tuple[Any, ...]],
    files: Collection[tuple[Any, ...]],
    copies: dict[str, dict[str, float]],
) -> Bundle:
    (
        bundle_id,
        group,
        sensor,
        opened,
        state,
        ended_by,
        completed,
        announced,
        first_offsite,
        sealed,
    ) = row
    return Bundle(
        bundle_id=str(bundle_id),
        group=str(group),
        sensor=None if sensor is None else str(sensor),
        opened=float(opened),
        state=str(state),
        ended_by=None if ended_by is None else str(ended_by),
        completed=None if completed is None else float(completed),
        announced=bool(announced),
        first_offsite=None if first_offsite is None else float(first_offsite),
        sealed=None if sealed is None else float(sealed),
        cameras=[
            CameraPart(str(c), str(label), int(exp), int(taken), int(bursts), failure)
            for c, label, exp, taken, bursts, failure in cameras
        ],
        files=[
            BundleFile(
                path=str(path),
                kind=str(kind),
                event_id=event_id,
                camera=camera,
                frame=frame,
                taken=float(taken),
                size=int(size),
                sha256=str(sha256),
                detections=None if detections is None else json.loads(detections),
                person=person,
                seen=bool(seen),
                copies=copies.get(str(path), {}),
            )
            for (
                path,
                kind,
                event_id,
                camera,
                frame,
                taken,
                size,
                sha256,
                detections,
                person,
                seen,
            ) in files
        ],
    )
