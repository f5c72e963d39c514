"""What a bundle records of the messages that pass: cameras joining and ending their
bursts, and each frame's files. Recorded by the storage stage (before detection) with cloud
storage on, else by the bundle stage itself."""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable
from pathlib import Path

from prometheus_client import Counter

from pylib.observe.logs import printable
from snapshot_processor.bundle.store import BEFORE, FRAME, NewFile
from snapshot_processor.contract.messages import BundleCameraMessage, SnapshotMessage

log = logging.getLogger(__name__)

BUNDLE_LATE = Counter(
    "bundle_late_total",
    "Cameras and files that came after their bundle was complete (not in its manifest)",
)

Joined = tuple[str, str, float, str | None, str, str, int]
Ended = tuple[str, str, str | None, int, int]


def joined(messages: Iterable[BundleCameraMessage]) -> list[Joined]:
    """The cameras that joined a bundle, as the bundle file takes them."""
    return [
        (m.bundle_id, m.group, m.opened, m.sensor, m.camera_key, m.device_label, m.expected)
        for m in messages
        if not m.ended
    ]


def ended(messages: Iterable[BundleCameraMessage], given_back: Container[str] = ()) -> list[Ended]:
    """The bursts that ended, as the bundle file takes them; frames ``given_back`` (their
    trigger comes again) are not counted as taken, and said."""
    found: list[Ended] = []
    for m in messages:
        if not m.ended:
            continue
        back = sum(1 for event_id in m.took if event_id in given_back)
        failure = m.failure
        if back and failure is None:
            failure = f"{back} frame(s) not kept (the upload queue could not be written)"
        found.append((m.bundle_id, m.camera_key, failure, m.unasked, len(m.took) - back))
    return found


def frame_files(snap: SnapshotMessage) -> list[NewFile]:
    """A triggered snapshot's files for its bundle: the frame and its stills from before the
    trigger (a still that cannot be read is left out, and said)."""
    if snap.bundle_id is None:
        return []
    bundle_id, event_id, camera = snap.bundle_id, snap.event_id, snap.camera_key
    found = [
        NewFile(bundle_id, Path(snap.storage_path), FRAME, snap.taken, snap.image, event_id,
                camera, snap.frame)
    ]  # fmt: skip
    for still in snap.pre_trigger_paths:
        try:
            data = Path(still).read_bytes()
        except OSError as exc:
            log.warning("cannot read %s for its bundle: %s", printable(still), exc.strerror)
            continue
        found.append(NewFile(bundle_id, Path(still), BEFORE, snap.taken, data, event_id, camera))
    return found
