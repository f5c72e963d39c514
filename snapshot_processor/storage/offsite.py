"""Off-site copies: the storage stage queues each snapshot's files for every destination
(one commit per batch) and passes it on at once with its ``storage_url``. A queue that
cannot be written hands the snapshot back as a requeue (its files removed), so no event
names a file that would never be copied."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from pylib.chain.envelope import Envelope
from pylib.chain.settle import DONE_KIND, done_envelope
from pylib.chain.stage import Stage
from pylib.observe.logs import printable
from pylib.upload.destination import Destination, UploadItem
from pylib.upload.queue import UploadQueue, UploadQueueError
from snapshot_processor.contract.messages import MessageError, SnapshotMessage
from snapshot_processor.storage.files import WriteTrouble

log = logging.getLogger(__name__)

UPLOADS_QUEUED = Counter(
    "uploads_queued_total", "Files queued for a cloud destination", ["destination"]
)
UPLOAD_QUEUE_WRITE_FAILURES = Counter(
    "upload_queue_write_failures_total",
    "Snapshots handed back because the upload queue could not be written",
)


def upload_items(snap: SnapshotMessage) -> list[UploadItem]:
    """The files of one snapshot to copy: the image, its annotated copy if any, and the
    stills from before its trigger."""
    paths = [Path(snap.storage_path)]
    if snap.annotated_path:
        paths.append(Path(snap.annotated_path))
    paths.extend(Path(still) for still in snap.pre_trigger_paths)
    return [
        UploadItem(path=path, name=path.name, folder=snap.camera_key, taken=snap.taken)
        for path in paths
    ]


class StorageStage(Stage):
    """Queues each snapshot's files for every destination and sets its ``storage_url``
    from the first of ``destinations`` (in order) that knows a link."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        queue: UploadQueue,
        destinations: Mapping[str, Destination],
        wake_uploader: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(name, stop_event, **kwargs)
        self.queue = queue
        self.destinations = dict(destinations)
        self.wake_uploader = wake_uploader
        self.disk = WriteTrouble("upload queue")

    def troubles(self) -> list[str]:
        found = super().troubles()
        disk = self.disk.current()
        if disk:
            found.append(disk)
        return found

    def on_messages(self, envelopes: list[Envelope]) -> None:
        # Done marks pass on in their place among the snapshots.
        order: list[SnapshotMessage | Envelope] = []
        for envelope in envelopes:
            if envelope.kind == DONE_KIND:
                order.append(envelope)
                continue
            try:
                order.append(SnapshotMessage.read(envelope))
            except MessageError as exc:
                self.reject(envelope, exc)
        queued = self._queue([item for item in order if isinstance(item, SnapshotMessage)])
        for item in order:
            if isinstance(item, Envelope):
                self.send(item)
            elif queued:
                self.send(self._linked(item).envelope())
            else:
                # The event would name a copy that is never made: give the part back.
                self._discard(item)
                self.send(done_envelope(item.settlement, requeue=True))

    def _queue(self, snaps: list[SnapshotMessage]) -> bool:
        """Add every file of ``snaps`` for every destination, in one commit."""
        entries = [
            (name, item)
            for snap in snaps
            for item in upload_items(snap)
            for name in self.destinations
        ]
        if not entries:
            return True
        try:
            self.queue.add(entries)
        except (UploadQueueError, OSError, sqlite3.Error) as exc:
            UPLOAD_QUEUE_WRITE_FAILURES.inc(len(snaps))
            self.disk.failed(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return False
        self.disk.succeeded()
        for name, _ in entries:
            UPLOADS_QUEUED.labels(name).inc()
        self.wake_uploader()
        return True

    def _discard(self, snap: SnapshotMessage) -> None:
        """Remove the files of a snapshot handed back. An uploaded file's copy goes too:
        its original stays in the upload dir until its event is out, and is taken again."""
        for item in upload_items(snap):
            try:
                item.path.unlink(missing_ok=True)
            except OSError as exc:  # retention removes it once it is old and not queued
                log.warning(
                    "%s: cannot remove %s, handed back: %s",
                    self.name,
                    printable(item.path),
                    exc.strerror or exc,
                )

    def _linked(self, snap: SnapshotMessage) -> SnapshotMessage:
        image = upload_items(snap)[0]
        for destination in self.destinations.values():
            link = destination.link(image)
            if link:
                return snap.with_storage_url(link)
        return snap
