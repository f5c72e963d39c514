"""Off-site copies. With cloud storage on, the storage stage comes before detection: it
queues every file for every destination in one commit per batch (a bundle's first frame,
and then its small copy, ahead of everything), records each bundle's cameras and files
(with their checksums), and passes each snapshot on at once with its ``storage_url``. A
batch that cannot be queued hands its snapshots back as requeues (their files removed), so
no event names a file that would never be copied."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from pylib.chain.envelope import Envelope
from pylib.chain.settle import DONE_KIND, done_envelope
from pylib.chain.stage import Stage
from pylib.observe.logs import printable
from pylib.observe.trouble import TroubleLog
from pylib.upload.destination import Destination, UploadItem
from pylib.upload.queue import UploadQueue, UploadQueueError
from snapshot_processor.bundle.frames import BUNDLE_LATE, Ended, Joined, ended, frame_files, joined
from snapshot_processor.bundle.preview import preview
from snapshot_processor.bundle.store import (
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
    "Snapshots handed back because the upload queue could not be written",
)
BUNDLE_RECORD_FAILURES = Counter(
    "bundle_record_failures_total",
    "Batches whose bundle cameras and files could not be recorded (their events went out)",
)

# Queued ahead of everything: a bundle's first frame, and its small copy before it.
FIRST = 1
AHEAD = 2
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
    """Queues each snapshot's files with ``offsite`` and records bundles in ``store``; see
    the module docstring."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        store: BundleStore,
        offsite: Offsite,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, stop_event, **kwargs)
        self.store = store
        self.offsite = offsite
        self.disk = WriteTrouble("upload queue")
        self.records = TroubleLog(log, "bundle file", level=logging.ERROR)
        self._firsts: OrderedDict[str, None] = OrderedDict()
        # Frames handed back (their triggers come again), for their bursts' ends, newest last.
        self._given_back: OrderedDict[str, None] = OrderedDict()

    def troubles(self) -> list[str]:
        found = super().troubles()
        for trouble in (self.disk.current(), self.records.reason):
            if trouble:
                found.append(trouble)
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
        try:
            kept = self._keep(snaps, cameras)
        except Exception:  # a bug must not cost the batch its settlement: it comes again
            log.exception("%s: %d snapshot(s) not kept; handed back", self.name, len(snaps))
            kept = False
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
        """Queue the files in one commit (False if that fails: the snapshots go back), then
        record the bundles' cameras and files in another. The record is the manifest's, not
        the evidence's: if it fails, the events still go out and the files off-site."""
        items: list[UploadItem] = []
        files: list[NewFile] = []
        for snap in snaps:
            first = self._first(snap)
            small = self._preview(snap) if first else None
            if small is not None:
                path, data = small
                item = UploadItem(path, path.name, snap.camera_key, snap.taken, snap.bundle_group)
                items.append(replace(item, priority=AHEAD))
                assert snap.bundle_id is not None  # only a bundle has a first frame
                files.append(NewFile(snap.bundle_id, path, PREVIEW, snap.taken, data,
                                     snap.event_id, snap.camera_key))  # fmt: skip
            items.extend(upload_items(snap, first=first))
            files.extend(frame_files(snap))
        try:
            self.offsite.add(items)
        except (UploadQueueError, OSError) as exc:
            UPLOAD_QUEUE_WRITE_FAILURES.inc(len(snaps))
            self.disk.failed(exc if isinstance(exc, OSError) else OSError(str(exc)))
            for snap in snaps:  # their triggers come again: a first frame is still to come
                self._firsts.pop(snap.bundle_id or "", None)
                self._given_back[snap.event_id] = None
            while len(self._given_back) > _FIRSTS_KEPT:
                self._given_back.popitem(last=False)
            # The bundles still learn of their cameras: none waits for frames given back.
            self._record(joined=joined(cameras), files=[], ended=ended(cameras, self._given_back))
            return False
        self.disk.succeeded()
        self._record(joined=joined(cameras), files=files, ended=ended(cameras, self._given_back))
        return True

    def _record(
        self,
        *,
        joined: Sequence[Joined] = (),
        files: Sequence[NewFile],
        ended: Sequence[Ended] = (),
    ) -> None:
        try:
            late = self.store.record(joined=joined, files=files, ended=ended)
        except BundleStoreError as exc:
            BUNDLE_RECORD_FAILURES.inc()
            self.records.failed(f"cannot record bundles: {exc}", kind="BundleStoreError")
            return
        self.records.succeeded()
        if late:
            BUNDLE_LATE.inc(late)
            log.info(
                "%s: %d camera(s) or file(s) came after their bundle was complete: published"
                " and copied into its folder, not listed in its manifest",
                self.name,
                late,
            )

    def _first(self, snap: SnapshotMessage) -> bool:
        """The bundle's first frame here."""
        if snap.bundle_id is None or snap.bundle_id in self._firsts:
            return False
        self._firsts[snap.bundle_id] = None
        while len(self._firsts) > _FIRSTS_KEPT:
            self._firsts.popitem(last=False)
        return True

    def _preview(self, snap: SnapshotMessage) -> tuple[Path, bytes] | None:
        """The small copy of a bundle's first frame, written beside it (a few milliseconds:
        the decoder reads the frame at a half or a quarter of its size); None if none."""
        small = preview(snap.image)
        if small is None:
            return None
        path = Path(snap.storage_path)
        target = path.with_name(f"{path.stem}.small.jpg")
        try:
            write_atomically(target, small)
        except OSError as exc:  # the frame itself still goes first
            log.warning("%s: cannot write %s: %s", self.name, printable(target), exc.strerror)
            return None
        return target, small

    def _discard(self, snap: SnapshotMessage) -> None:
        """Remove the files of a snapshot handed back (a small copy too). An uploaded file's
        copy goes too: its original stays in the upload dir until its event is out, and is
        taken again."""
        path = Path(snap.storage_path)
        for gone in [
            path.with_name(f"{path.stem}.small.jpg"),
            *(i.path for i in upload_items(snap)),
        ]:
            try:
                gone.unlink(missing_ok=True)
            except OSError as exc:  # retention removes it once it is old and not queued
                log.warning(
                    "%s: cannot remove %s, handed back: %s",
                    self.name,
                    printable(gone),
                    exc.strerror or exc,
                )

    def _linked(self, snap: SnapshotMessage) -> SnapshotMessage:
        link = self.offsite.link(upload_items(snap)[0])
        return snap.with_storage_url(link) if link else snap
