"""Where snapshots are kept on disk: one file per event, never overwritten; a failed write
is never settled as done (its trigger comes back later)."""

from __future__ import annotations

import logging
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import Counter

from pylib.observe.trouble import TroubleLog

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"
# Each sensor event's files: bundles/YYYY/MM/DD/<bundle name>/
BUNDLES_DIR = "bundles"
# Uploads refused by ingest (too large, not a whole JPEG), kept for a person to look at.
QUARANTINE_DIR = "quarantine"

# Every snapshot kept, whoever took it: a camera fetch or a camera's push.
SNAPSHOTS = Counter("snapshots_total", "Snapshots fetched and kept", ["camera", "source"])


def slug(text: str) -> str:
    """A folder name from a camera key: lower case, no spaces."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-.")
    return cleaned or "camera"


def snapshot_path(root: Path, camera_key: str, taken: float, event_id: str) -> Path:
    """``<root>/snapshots/<camera>/<YYYY-MM-DD>/<camera>_<YYYYmmddTHHMMSS.ffffff>_<id>.jpg``;
    the event id makes every name unique."""
    moment, camera = datetime.fromtimestamp(taken, UTC), slug(camera_key)
    name = f"{camera}_{moment:%Y%m%dT%H%M%S.%f}Z_{event_id[:12]}.jpg"
    return day_folder(root, camera_key, taken) / name


def bundle_path(root: Path, group: str, camera_key: str, taken: float, event_id: str) -> Path:
    """A triggered snapshot's file, named as :func:`snapshot_path` names it, in the folder
    of its bundle: ``<root>/bundles/<group>/``."""
    return bundle_folder(root, group) / snapshot_path(root, camera_key, taken, event_id).name


def bundle_folder(root: Path, group: str) -> Path:
    """The local folder of the bundle whose group is ``YYYY/MM/DD/<name>``."""
    return root / BUNDLES_DIR / group


def day_folder(root: Path, camera_key: str, when: float) -> Path:
    """The folder of a camera's snapshots taken on the (UTC) day of ``when``."""
    moment = datetime.fromtimestamp(when, UTC)
    return root / SNAPSHOTS_DIR / slug(camera_key) / f"{moment:%Y-%m-%d}"


# The next day's bundle folder is made this long before it starts.
PREPARE_AHEAD = 300.0
DAY = 86_400


def prepare_day_folders(root: Path, when: float) -> list[Path]:
    """Make the bundles' folder for the day of ``when`` (``bundles/YYYY/MM/DD``), and the
    next day's if it starts within :data:`PREPARE_AHEAD`; the folders this call made."""
    made: list[Path] = []
    for moment in dict.fromkeys([when, when + PREPARE_AHEAD]):
        day = datetime.fromtimestamp(moment, UTC)
        made.extend(make_folders(root / BUNDLES_DIR / f"{day:%Y/%m/%d}"))
    return made


def next_preparation(now: float) -> float:
    """Seconds from ``now`` until the next moment :data:`PREPARE_AHEAD` before a midnight (UTC)."""
    due = (now // DAY + 1) * DAY - PREPARE_AHEAD
    while due <= now:
        due += DAY
    return due - now


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary name and rename, so no reader sees half a file; durable on
    return, name and all (the outbox names this file instead of holding its bytes)."""
    make_folders(path.parent)
    temporary = path.with_name(f".{path.name}.part")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            with memoryview(data) as view:
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # a half file only takes the space others need
        raise
    sync_folder(path.parent)


def keep_linked(path: Path, source: Path, data: bytes) -> None:
    """Make ``path`` a durable copy of ``source`` (bytes ``data``): a hard link where the file
    system allows and the file still holds ``data`` (its size), else a written copy."""
    make_folders(path.parent)
    try:
        os.link(source, path, follow_symlinks=False)
    except OSError:
        write_atomically(path, data)  # another file system: a copy
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            changed = os.fstat(fd).st_size != len(data)
            if not changed:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not changed:
            sync_folder(path.parent)
            return
    except OSError:
        path.unlink(missing_ok=True)  # no snapshot file that no event names
        raise
    # Written to after it was read: the event carries what was read, so must the file.
    os.unlink(path)
    write_atomically(path, data)


# Folders known durable (made and synced, or found), checked without a lock.
_DURABLE: set[Path] = set()
_DURABLE_MAX = 4096
# Folders some thread is making whose names may not be synced yet: a thread that finds
# one syncs its name too, rather than trust a folder another thread made a moment ago.
_UNSYNCED: set[Path] = set()
_UNSYNCED_LOCK = threading.Lock()


def make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and any missing parents, each one's name synced (its parent
    folder) before this returns; the ones this call made, outermost first."""
    # In this order: a folder removed and being made again is in _UNSYNCED from before it
    # exists until its name is synced, so it is never trusted in between.
    if folder.is_dir() and folder in _DURABLE:
        with _UNSYNCED_LOCK:
            if folder not in _UNSYNCED:
                return []
    missing: list[Path] = []
    walk = folder
    while not walk.is_dir():
        missing.append(walk)
        if walk.parent == walk:
            break
        walk = walk.parent
    # Each missing folder is marked before it is made, so no thread finds it unmarked
    # before its name is on disk.
    with _UNSYNCED_LOCK:
        _UNSYNCED.update(missing)
    _DURABLE.difference_update(missing)  # gone since: no longer known durable
    made: list[Path] = []
    for each in reversed(missing):
        try:
            each.mkdir()
        except FileExistsError:
            continue  # another thread made it: synced below all the same
        made.append(each)
    # Found folders another thread made but may not have synced yet count as missing.
    settled = list(missing)
    with _UNSYNCED_LOCK:
        while walk in _UNSYNCED and walk.parent != walk:
            settled.append(walk)
            walk = walk.parent
    for parent in dict.fromkeys(each.parent for each in reversed(settled)):
        sync_folder(parent)
    with _UNSYNCED_LOCK:
        # A folder whose mkdir or sync failed stays marked: whoever finds it syncs again.
        _UNSYNCED.difference_update(settled)
    if len(_DURABLE) >= _DURABLE_MAX:
        _DURABLE.clear()  # folders of days gone by; the ones in use come back
    _DURABLE.add(folder)
    return made


def sync_folder(folder: Path) -> None:
    """Sync ``folder``: the names in it are on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteTrouble:
    """Failed writes under a root: an ERROR line when the trouble starts or changes, a
    reminder at most once a minute, a line when it ends. Thread-safe."""

    def __init__(self, what: str, interval: float = 60.0) -> None:
        self.what = what
        self._log = TroubleLog(log, f"writes of {what}", interval=interval, level=logging.ERROR)

    def failed(self, exc: OSError) -> None:
        """A write failed: remember it for health, log it as :class:`TroubleLog` says."""
        self._log.failed(f"cannot write {self.what}: {exc.strerror or exc}")

    def succeeded(self) -> None:
        self._log.succeeded()

    def current(self) -> str | None:
        return self._log.reason
