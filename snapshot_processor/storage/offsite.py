"""Off-site copies. The storage stage comes before detection: it records each bundle's
cameras and files (with their checksums) and queues every file for every destination in
one commit per batch, the small copy of a bundle's first frame ahead of everything, then
passes each snapshot on at once with its ``storage_url``. A batch that cannot be kept
hands its snapshots back as requeues (their files removed), so no event names a file that
would never be copied."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from pylib.chain.envelope import Envelope
from pylib.chain.settle import DONE_KIND, done_envelope
from pylib.chain.stage import Stage
from pylib.observe.logs import printable
from pylib.upload.destination import Destination, UploadItem
from pylib.upload.queue import UploadQueue, UploadQueueError
from snapshot_processor.bundle.preview import preview
from snapshot_processor.bundle.store import (
    BEFORE,
    FRAME,
    PREVIEW,
    BundleStore,
    BundleStoreError,
    NewFile,
)
from snapshot_processor.contract.messages import (
    BUNDLE_CAMERA_KIND,
    SNAPSHOT_KIND,
    BundleCameraMessage,
    MessageError,
    SnapshotMessage,
)
from snapshot_processor.storage.files import WriteTrouble, write_atomically

log = logging.getLogger(__name__)

UPLOADS_QUEUED = Counter(
    "uploads_queued_total", "Files queued for a cloud destination", ["destination"]
)
UPLOAD_QUEUE_WRITE_FAILURES = Counter(
    "upload_queue_write_failures_total",
    "Snapshots handed back because the upload queue or the bundle file could not be written",
)

# Queued ahead of everything: a bundle's first frame, small.
FIRST = 1
# Bundles whose first frame was seen, remembered this long (by count).
_FIRSTS_KEPT = 1024


class Offsite:
    """The upload queue and its destinations as the chain's stages use them (any thread)."""

    def __init__(
        self,
        queue: UploadQueue,
        destinations: Mapping[str, Destination],
        wake_uploader: Callable[[], None],
    ) -> None:
        self.queue = queue
        self.destinations = dict(destinations)
        self.wake_uploader = wake_uploader
        # For links: those that know a group's folder at once first, so every frame of a
        # bundle and its bundle event name the same folder.
        self._linking = sorted(self.destinations.values(), key=lambda d: not d.links_ahead)

    def add(self, items: list[UploadItem]) -> None:
        """Queue each item for every destination, in one commit, and wake the uploader;
        raises :class:`UploadQueueError` (or OSError) if the queue cannot be written."""
        entries = [(name, item) for item in items for name in self.destinations]
        if not entries:
            return
        try:
            self.queue.add(entries)
        except sqlite3.Error as exc:
            raise UploadQueueError(str(exc)) from None
        for name, _ in entries:
            UPLOADS_QUEUED.labels(name).inc()
        self.wake_uploader()

    def link(self, item: UploadItem) -> str | None:
        """The link a person opens for ``item``: its group's folder from the first
        destination that knows it, else the first link known without the group (Drive's
        top folder, before it has made the group's)."""
        candidates = [item, replace(item, group=None)] if item.group else [item]
        for candidate in candidates:
            for destination in self._linking:
                if found := destination.link(candidate):
                    return found
        return None

    def folder_link(self, group: str) -> str | None:
        """The link of a group's folder, from the first destination that knows it."""
        probe = UploadItem(path=Path(group), name="", folder="", taken=0.0, group=group)
        for destination in self._linking:
            if found := destination.link(probe):
                return found
        return None


def upload_items(snap: SnapshotMessage, *, first: bool = False) -> list[UploadItem]:
    """The files of one snapshot to copy: the image, its annotated copy if any, and the
    stills from before its trigger; ``first`` puts the image ahead of everything."""
    paths = [Path(snap.storage_path)]
    if snap.annotated_path:
        paths.append(Path(snap.annotated_path))
    paths.extend(Path(still) for still in snap.pre_trigger_paths)
    return [
        UploadItem(
            path=path,
            name=path.name,
            folder=snap.camera_key,
            taken=snap.taken,
            group=snap.bundle_group,
            priority=FIRST if first and index == 0 else 0,
        )
        for index, path in enumerate(paths)
    ]


class StorageStage(Stage):
    """Records bundles in ``store`` and queues each snapshot's files with ``offsite`` (when
    cloud storage is configured); see the module docstring."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        store: BundleStore,
        offsite: Offsite | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, stop_event, **kwargs)
        self.store = store
        self.offsite = offsite
        self.disk = WriteTrouble("bundle file and upload queue")
        self._firsts: OrderedDict[str, None] = OrderedDict()

    def troubles(self) -> list[str]:
        found = super().troubles()
        disk = self.disk.current()
        if disk:
            found.append(disk)
        return found

    def on_messages(self, envelopes: list[Envelope]) -> None:
        # Done marks and bundle cameras pass on in their place among the snapshots.
        order: list[SnapshotMessage | Envelope] = []
        cameras: list[BundleCameraMessage] = []
        for envelope in envelopes:
            try:
                if envelope.kind == SNAPSHOT_KIND:
                    order.append(SnapshotMessage.read(envelope))
                    continue
                if envelope.kind == BUNDLE_CAMERA_KIND:
                    cameras.append(BundleCameraMessage.read(envelope))
                elif envelope.kind != DONE_KIND:
                    raise MessageError(f"a {envelope.kind!r} message where a snapshot belongs")
            except MessageError as exc:
                self.reject(envelope, exc)
                continue
            order.append(envelope)
        snaps = [item for item in order if isinstance(item, SnapshotMessage)]
        kept = self._keep(snaps, cameras)
        for item in order:
            if isinstance(item, Envelope):
                self.send(item)
            elif kept:
                self.send(self._linked(item).envelope())
            else:
                # The event would name a copy that is never made: give the part back.
                self._discard(item)
                self.send(done_envelope(item.settlement, requeue=True))

    def _keep(self, snaps: list[SnapshotMessage], cameras: list[BundleCameraMessage]) -> bool:
        """Record the bundles' cameras and files, then queue the files, each in one commit."""
        files: list[NewFile] = []
        items: list[UploadItem] = []
        for snap in snaps:
            # Off-site first: without a destination there is nothing to send ahead.
            first = (
                self.offsite is not None
                and snap.bundle_id is not None
                and self._first(snap.bundle_id)
            )
            small = self._preview(snap) if first else None
            if snap.bundle_id is not None:
                files.extend(self._files(snap, small))
            if small is not None:
                path = small[0]
                items.append(
                    UploadItem(
                        path, path.name, snap.camera_key, snap.taken, snap.bundle_group, FIRST
                    )
                )
            items.extend(upload_items(snap, first=first and small is None))
        try:
            self.store.record(
                joined=[
                    (
                        m.bundle_id,
                        m.group,
                        m.opened,
                        m.sensor,
                        m.camera_key,
                        m.device_label,
                        m.expected,
                    )
                    for m in cameras
                    if not m.ended
                ],
                files=files,
                ended=[
                    (m.bundle_id, m.camera_key, len(m.took), m.failure) for m in cameras if m.ended
                ],
            )
            if self.offsite is not None:
                self.offsite.add(items)
        except (BundleStoreError, UploadQueueError, OSError) as exc:
            UPLOAD_QUEUE_WRITE_FAILURES.inc(len(snaps))
            self.disk.failed(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return False
        self.disk.succeeded()
        return True

    def _first(self, bundle_id: str) -> bool:
        if bundle_id in self._firsts:
            return False
        self._firsts[bundle_id] = None
        while len(self._firsts) > _FIRSTS_KEPT:
            self._firsts.popitem(last=False)
        return True

    def _preview(self, snap: SnapshotMessage) -> tuple[Path, bytes] | None:
        """Write the small copy of a bundle's first frame beside it; None if none is made."""
        small = preview(snap.image)
        if small is None:
            return None
        path = Path(snap.storage_path)
        target = path.with_name(f"{path.stem}.small.jpg")
        try:
            write_atomically(target, small)
        except OSError as exc:  # the frame itself goes first instead
            log.warning("%s: cannot write %s: %s", self.name, printable(target), exc.strerror)
            return None
        return target, small

    def _files(self, snap: SnapshotMessage, small: tuple[Path, bytes] | None) -> list[NewFile]:
        assert snap.bundle_id is not None
        bundle_id, event_id, camera = snap.bundle_id, snap.event_id, snap.camera_key
        found = [
            NewFile(
                bundle_id,
                Path(snap.storage_path),
                FRAME,
                snap.taken,
                snap.image,
                event_id,
                camera,
                snap.frame,
            )
        ]
        for still in snap.pre_trigger_paths:
            try:
                data = Path(still).read_bytes()
            except OSError as exc:
                log.warning("%s: cannot read %s: %s", self.name, printable(still), exc.strerror)
                continue
            found.append(
                NewFile(bundle_id, Path(still), BEFORE, snap.taken, data, event_id, camera)
            )
        if small is not None:
            found.append(
                NewFile(bundle_id, small[0], PREVIEW, snap.taken, small[1], event_id, camera)
            )
        return found

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
        if self.offsite is None:
            return snap
        link = self.offsite.link(upload_items(snap)[0])
        return snap.with_storage_url(link) if link else snap
