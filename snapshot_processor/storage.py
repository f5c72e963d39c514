"""Where snapshots are kept on disk: one file per event, never overwritten.

A write that fails (a full disk, a read-only or vanished mount) is never settled as
done: its trigger comes back later. :class:`WriteTrouble` keeps the log to one line a
minute and shows the trouble in health until a write succeeds again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"


def slug(text: str) -> str:
    """A folder name from a camera key: lower case, no spaces."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-.")
    return cleaned or "camera"


def snapshot_path(root: Path, camera_key: str, taken: float, event_id: str) -> Path:
    """``<root>/snapshots/<camera>/<YYYY-MM-DD>/<camera>_<YYYYmmddTHHMMSS.ffffff>_<id>.jpg``.

    The event id makes every name unique, so two snapshots in the same second both stay.
    """
    moment = datetime.fromtimestamp(taken, UTC)
    name = f"{slug(camera_key)}_{moment:%Y%m%dT%H%M%S.%f}Z_{event_id[:12]}.jpg"
    return root / SNAPSHOTS_DIR / slug(camera_key) / f"{moment:%Y-%m-%d}" / name


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary name and rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)  # a half file only takes the space others need
        raise


class WriteTrouble:
    """Writes under a root that fail: one ERROR line a minute at most, health until fixed.

    Safe to use from several threads (the snapshot stage writes on its pool).
    """

    def __init__(self, what: str, interval: float = 60.0) -> None:
        self.what = what
        self.interval = interval
        self._lock = threading.Lock()
        self._trouble: str | None = None
        self._failures = 0
        self._log_at = 0.0

    def failed(self, exc: OSError) -> None:
        """A write failed: remember it for health, log it unless logged within a minute."""
        with self._lock:
            self._trouble = f"cannot write {self.what}: {exc.strerror or exc}"
            self._failures += 1
            now = time.monotonic()
            if now < self._log_at:
                return
            self._log_at = now + self.interval
            failures = self._failures
        log.error(
            "cannot write %s (%s); %d failure(s) so far, their triggers come again later;"
            " next line in %.0f s at most",
            self.what,
            exc,
            failures,
            self.interval,
        )

    def succeeded(self) -> None:
        """A write went through: the trouble, if any, is over."""
        with self._lock:
            if self._trouble is None:
                return
            failures, self._trouble, self._failures, self._log_at = self._failures, None, 0, 0.0
        log.info("%s can be written again after %d failure(s)", self.what, failures)

    def current(self) -> str | None:
        """What is wrong now, or None."""
        return self._trouble
