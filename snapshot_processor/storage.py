"""Where snapshots are kept on disk: one file per event, never overwritten."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

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
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
