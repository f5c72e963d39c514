"""The bundle stage, after detection: it notes each frame's detections (and queues its
annotated copy off-site), and when a bundle is complete (every camera's burst ended and
every frame through detection, or its deadline passed) sends its bundle event on. At start
it closes the bundles a stop cut short and announces those whose event never got out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from pylib.chain.envelope import Envelope
from pylib.chain.settle import (
    DONE_KIND,
    Ack,
    Settlement,
    ack_token,
    stop_taking_acks_directly,
    take_acks_directly,
)
from pylib.chain.stage import Stage, Timer
from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueueError
from snapshot_processor.bundle.frames import BUNDLE_LATE, ended, frame_files, joined
from snapshot_processor.bundle.manifest import (
    ALL_CAMERAS,
    DEADLINE,
    RESTART,
    manifest,
    person_confidence,
)
from snapshot_processor.bundle.seal import Sealer
from snapshot_processor.bundle.store import (
    ANNOTATED,
    COLLECTING,
    BundleStore,
    BundleStoreError,
    NewFile,
)
from snapshot_processor.contract.messages import (
    BUNDLE_CAMERA_KIND,
    SNAPSHOT_KIND,
    BundleCameraMessage,
    BundleEventMessage,
    MessageError,
    SnapshotMessage,
)

log = logging.getLogger(__name__)

BUNDLES = Counter("bundles_total", "Bundles complete, by what completed them", ["complete_by"])
BUNDLE_SECONDS = Histogram(
    "bundle_seconds",
    "From a bundle's first trigger to its bundle event sent on",
    buckets=(0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
BUNDLE_EVENTS_HANDED_BACK = Counter(
    "bundle_events_handed_back_total",
    "Bundle events the publisher could not store (each sent again later)",
)
BUNDLE_STORE_FAILURES = Counter(
    "bundle_store_failures_total", "Bundle steps lost because the bundle file could not be used"
)

ACK_ADDRESS = "inproc://bundle-events"
# A bundle a camera joined this recently is not complete yet (seconds).
QUIET = 0.5
# Bundles not sealed are looked at this often: a step that failed is taken again.
SWEEP_EVERY = 300.0
# A bundle event the outbox handed back, or one whose bundle could not be read, is sent
# again after this long; a bundle that could not be completed is tried again after RETRY.
ANNOUNCE_AGAIN = 30.0
RETRY = 5.0
# What the manifest says of a camera whose burst had not ended.
NO_ANSWER = "no answer by the deadline (BUNDLE_DEADLINE)"
STOPPED = "the daemon stopped before its snapshots were all taken; its trigger comes again"


def close_interrupted(store: BundleStore, now: float) -> list[str]:
    """At start, before anything runs: bundles a stop cut short are complete, with what
    they hold (their unfinished triggers come again, as bundles of their own)."""
    closed = [
        bundle_id
        for bundle_id in store.ids(COLLECTING)
        if store.complete(bundle_id, RESTART, now, STOPPED)
    ]
    for _ in closed:
        BUNDLES.labels(RESTART).inc()
    return closed


class BundleStage(Stage):
    """See the module docstring. ``closed(bundle_id)`` tells the grouping a bundle is complete."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        store: BundleStore,
        sealer: Sealer,
        deadline: float,
        closed: Callable[[str], None],
        records: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, stop_event, workers=1, **kwargs)
        self.store = store
        self.sealer = sealer
        # No storage stage before this one (no cloud storage): the bundles are recorded here.
        self.records = records
        self.deadline = deadline
        self.closed = closed
        self._deadlines: dict[str, Timer] = {}
        # When a camera last joined each bundle collecting (monotonic), and those whose
        # completion is to be looked at again once it has been quiet.
        self._joined: dict[str, float] = {}
        self._rechecks: set[str] = set()
        # Bundle events handed on and not yet stored by the publisher (any thread).
        self._announcing: set[str] = set()
        self._announcing_lock = threading.Lock()

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._deadlines.clear()  # the timers went with the thread's last run
        self._rechecks.clear()
        take_acks_directly(ACK_ADDRESS, self._announced)
        self.call_later(SWEEP_EVERY, self._sweep)
        try:
            waiting = [self.store.bundle(bundle_id) for bundle_id in self.store.ids(COLLECTING)]
            unannounced = self.store.ids(announced=False)
        except BundleStoreError as exc:
            BUNDLE_STORE_FAILURES.inc()
            log.error("%s: cannot read the bundles left from before: %s", self.name, exc)
            return
        collecting = {bundle.bundle_id for bundle in waiting if bundle is not None}
        self._joined = {k: v for k, v in self._joined.items() if k in collecting}
        for bundle in waiting:  # this thread restarted: their deadlines are set again
            if bundle is not None:
                self._set_deadline(bundle.bundle_id, bundle.opened)
                self._complete_if_ready(bundle.bundle_id)
        for bundle_id in unannounced:
            if bundle_id not in collecting:
                self._announce(bundle_id)

    def on_thread_close(self) -> None:
        stop_taking_acks_directly(ACK_ADDRESS)
        super().on_thread_close()

    def on_messages(self, envelopes: list[Envelope]) -> None:
        snaps: list[SnapshotMessage] = []
        cameras: list[BundleCameraMessage] = []
        for envelope in envelopes:
            try:
                if envelope.kind == BUNDLE_CAMERA_KIND:
                    cameras.append(BundleCameraMessage.read(envelope))
                    continue  # its work ends here
                if envelope.kind == SNAPSHOT_KIND:
                    snaps.append(SnapshotMessage.read(envelope))
                elif envelope.kind != DONE_KIND:
                    raise MessageError(f"a {envelope.kind!r} message where a snapshot belongs")
            except MessageError as exc:
                self.reject(envelope, exc)
                continue
            # Every frame's event goes on first: the bundles' work must not delay it, and a
            # bundle event never overtakes its last frame's.
            self.send(envelope)
        try:
            self._follow(snaps, cameras)
        except Exception:  # the frames are on their way: a bug here costs bundles, not them
            BUNDLE_STORE_FAILURES.inc()
            log.exception("%s: %d frame(s) not noted in their bundles", self.name, len(snaps))

    def _follow(self, snaps: list[SnapshotMessage], cameras: list[BundleCameraMessage]) -> None:
        """The batch's cameras and frames in their bundles, each step one transaction."""
        if self.records:
            self._record(cameras, snaps)
        now = time.monotonic()
        for message in cameras:
            if not message.ended:
                self._joined[message.bundle_id] = now
                self._set_deadline(message.bundle_id, message.opened)
        annotated = [new for snap in snaps if (new := self._annotated(snap)) is not None]
        frames = [
            (snap.event_id, snap.detections if snap.analysed else None,
             person_confidence(snap.detections))
            for snap in snaps
            if snap.bundle_id is not None
        ]  # fmt: skip
        touched = {m.bundle_id for m in cameras if m.ended}
        if frames:
            try:
                touched |= self.store.saw(frames, annotated)
            except BundleStoreError as exc:
                BUNDLE_STORE_FAILURES.inc()
                log.error("%s: %d frame(s) not noted in their bundles: %s", self.name,
                          len(frames), exc)  # fmt: skip
        for bundle_id in sorted(touched):
            self._complete_if_ready(bundle_id)

    def _record(self, cameras: list[BundleCameraMessage], snaps: list[SnapshotMessage]) -> None:
        """With no storage stage before this one: record what it would have."""
        try:
            late = self.store.record(
                joined=joined(cameras),
                files=[new for snap in snaps for new in frame_files(snap)],
                ended=ended(cameras),
            )
        except BundleStoreError as exc:
            BUNDLE_STORE_FAILURES.inc()
            log.error("%s: bundles not recorded: %s", self.name, exc)
            return
        if late:
            BUNDLE_LATE.inc(late)
            log.info("%s: %d camera(s) or file(s) came after their bundle was complete",
                     self.name, late)  # fmt: skip

    # --- on the stage's thread -------------------------------------------------------
    def _sweep(self) -> None:
        self.call_later(SWEEP_EVERY, self._sweep)
        self.submit(self.sealer.sweep)

    def _announce_later(self, bundle_id: str) -> None:
        self.call_later(ANNOUNCE_AGAIN, lambda: self._announce(bundle_id))

    def _in_flight(self, bundle_id: str) -> bool:
        with self._announcing_lock:
            return bundle_id in self._announcing

    def _set_deadline(self, bundle_id: str, opened: float) -> None:
        if bundle_id in self._deadlines:
            return
        due = max(0.0, opened + self.deadline - time.time())
        self._deadlines[bundle_id] = self.call_later(
            due, lambda: self._complete(bundle_id, DEADLINE)
        )

    def _annotated(self, snap: SnapshotMessage) -> NewFile | None:
        """Queue the annotated copy off-site; its record for the bundle, if in one."""
        if not snap.annotated_path:
            return None
        path = Path(snap.annotated_path)
        offsite = self.sealer.offsite
        if offsite is not None:
            item = UploadItem(path, path.name, snap.camera_key, snap.taken, snap.bundle_group)
            try:
                offsite.add([item])
            except (UploadQueueError, OSError) as exc:
                log.error("%s: annotated copy %s not queued: %s", self.name, path.name, exc)
        if snap.bundle_id is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("%s: cannot read %s: %s", self.name, path.name, exc.strerror)
            return None
        return NewFile(
            bundle_id=snap.bundle_id,
            path=path,
            kind=ANNOTATED,
            taken=snap.taken,
            data=data,
            event_id=snap.event_id,
            camera=snap.camera_key,
            frame=snap.frame,
        )

    def _complete_if_ready(self, bundle_id: str) -> None:
        """Complete the bundle if every burst has ended, every frame is through, and no
        camera joined in the last moment (the triggers of one sensor come together: one
        that follows at once is the same event's, and joins rather than starting another)."""
        quiet = self._joined.get(bundle_id, 0.0) + QUIET - time.monotonic()
        if quiet > 0:
            if bundle_id not in self._rechecks:
                self._rechecks.add(bundle_id)
                self.call_later(quiet, lambda: self._recheck(bundle_id))
            return
        try:
            ready = self.store.ready(bundle_id)
        except BundleStoreError as exc:
            BUNDLE_STORE_FAILURES.inc()
            log.error("%s: bundle %s: %s", self.name, bundle_id, exc)
            return
        if ready:
            self._complete(bundle_id, ALL_CAMERAS)

    def _recheck(self, bundle_id: str) -> None:
        self._rechecks.discard(bundle_id)
        self._complete_if_ready(bundle_id)

    def _complete(self, bundle_id: str, by: str) -> None:
        timer = self._deadlines.pop(bundle_id, None)
        if timer is not None:
            timer.cancel()
        try:
            completed = self.store.complete(bundle_id, by, time.time(), NO_ANSWER)
        except BundleStoreError as exc:
            BUNDLE_STORE_FAILURES.inc()
            log.error("%s: bundle %s not completed (tried again in %.0f s): %s", self.name,
                      bundle_id, RETRY, exc)  # fmt: skip
            self._deadlines[bundle_id] = self.call_later(
                RETRY, lambda: self._complete(bundle_id, by)
            )
            return
        self._joined.pop(bundle_id, None)
        if not completed:
            return
        self.closed(bundle_id)
        BUNDLES.labels(by).inc()
        self._announce(bundle_id)
        self.submit(self.sealer.check, bundle_id)  # it writes the manifest: off this thread

    def _announce(self, bundle_id: str) -> None:
        """Send the bundle event on, unless it is on its way already or was stored."""
        if self._in_flight(bundle_id):
            return
        try:
            bundle = self.store.bundle(bundle_id)
        except BundleStoreError as exc:
            BUNDLE_STORE_FAILURES.inc()
            log.error("%s: bundle %s not announced (tried again in %.0f s): %s", self.name,
                      bundle_id, ANNOUNCE_AGAIN, exc)  # fmt: skip
            self._announce_later(bundle_id)
            return
        if bundle is None or bundle.announced:
            return
        offsite = self.sealer.offsite
        link = offsite.folder_link(bundle.group) if offsite is not None else None
        found = manifest(bundle, self.sealer.folder(bundle), link)
        settlement = Settlement(ack_token(ACK_ADDRESS, bundle=bundle_id))
        with self._announcing_lock:
            self._announcing.add(bundle_id)
        try:
            self.send(BundleEventMessage(bundle_id, found, settlement).envelope())
        except BaseException:
            with self._announcing_lock:
                self._announcing.discard(bundle_id)
            raise
        seconds = time.time() - bundle.opened
        if bundle.ended_by != RESTART:
            BUNDLE_SECONDS.observe(max(0.0, seconds))
        frames = len(found["frames"])
        log.info(
            "bundle %s: %d camera(s), %d frame(s), %d failed, complete by %s, %d ms after its"
            " first trigger",
            bundle_id,
            len(bundle.cameras),
            frames,
            len(found["failed"]),
            bundle.ended_by,
            max(0, round(seconds * 1000)),
        )

    # --- on the publisher's thread ---------------------------------------------------
    def _announced(self, ack: Ack) -> None:
        """The publisher stored the bundle event: it is not sent again after a restart."""
        bundle_id = ack.get("bundle")
        if not isinstance(bundle_id, str):
            return
        if ack.get("requeue"):
            with self._announcing_lock:
                self._announcing.discard(bundle_id)
            # The outbox could not take it: sent again in a while, as at the next start.
            BUNDLE_EVENTS_HANDED_BACK.inc()
            log.warning("bundle %s: its event was not stored; sent again in %.0f s",
                        bundle_id, ANNOUNCE_AGAIN)  # fmt: skip
            self.call_soon_threadsafe(lambda: self._announce_later(bundle_id))
            return
        try:
            self.store.announced(bundle_id)
        except BundleStoreError as exc:  # announced again at the next start
            BUNDLE_STORE_FAILURES.inc()
            log.warning("bundle %s: its event's delivery not noted: %s", bundle_id, exc)
        with self._announcing_lock:  # noted first: a restart between cannot send it again
            self._announcing.discard(bundle_id)
