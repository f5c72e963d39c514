"""The data root: a folder this process can write, held by one daemon at a time (an ``flock``
the kernel releases however the process ends, so a stale lock never keeps the next out)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "daemon.lock"


class DataRootError(Exception):
    """The data root cannot be created or written; the message names the path."""


class DataRootBusyError(Exception):
    """Another process holds the data root's lock; the message names the path and its pid."""


def check_writable(path: Path) -> str | None:
    """Why ``path`` could not be created or written, or None; changes nothing on disk."""
    path = path.absolute()
    if path.exists():
        if not path.is_dir():
            return f"{path} exists and is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user"
        return None
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return f"{path} cannot be created: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {existing} is not writable by this user"
    return None


# A full disk is a fault the daemon reports and survives, not a reason to refuse to start.
_FULL = (errno.ENOSPC, errno.EDQUOT)


def prepare(path: Path) -> str | None:
    """Create ``path`` and prove it writable: a warning if full; :class:`DataRootError` if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataRootError(f"cannot create data root {path}: {exc.strerror or exc}") from None
    probe = path / f".write-test-{os.getpid()}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if exc.errno in _FULL:
            return f"data root {path} is full: {exc.strerror}"
        raise DataRootError(f"cannot write in data root {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return None


class DataRootLock:
    """An exclusive lock on ``<root>/daemon.lock``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataRootBusyError` (never waits)."""
        try:
            # Not truncated on open: the holder's pid must stay readable until we hold it.
            handle = self.path.open("a+")
        except OSError as exc:
            raise DataRootError(
                f"cannot open lock file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise DataRootBusyError(
                    f"data root {self.path.parent} is in use by another daemon (pid {holder}, "
                    f"lock {self.path})"
                ) from None
            raise DataRootError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DataRootLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
