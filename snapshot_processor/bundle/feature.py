"""Bundles as the daemon runs them: the bundle file (opened first, closed last), the sealer
the uploader reports to, and the bundle stage after detection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pylib.runtime.daemon import Daemon, StartError
from pylib.upload.queue import UploadQueueError
from snapshot_processor.bundle.seal import Sealer
from snapshot_processor.bundle.stage import BundleStage, close_interrupted
from snapshot_processor.bundle.store import BundleStore, BundleStoreError
from snapshot_processor.config import Settings
from snapshot_processor.storage.feature import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundles:
    store: BundleStore
    sealer: Sealer
    stage: BundleStage


def open_store(settings: Settings, daemon: Daemon) -> BundleStore:
    """The bundle file; closed after everything that writes it has stopped."""
    try:
        store = BundleStore(settings.bundles_path)
    except BundleStoreError as exc:
        raise StartError(f"the bundle file cannot be opened: {exc}") from None

    def close(timeout: float) -> bool:
        store.close()
        return True

    daemon.add_step("bundle file", lambda: None, close)
    return store


def build(
    settings: Settings,
    daemon: Daemon,
    store: BundleStore,
    kept: Storage,
    closed: Callable[[str], None],
) -> Bundles:
    """Close what a stop cut short and resume sealing, before any thread starts; then the
    stage. ``closed`` tells the grouping a bundle is complete."""
    sealer = Sealer(store, settings.snapshots_root_dir, kept.offsite)
    if kept.uploader is not None:
        kept.uploader.on_uploaded = sealer.uploaded
    try:
        interrupted = close_interrupted(store, time.time())
        sealer.resume()
    except (BundleStoreError, UploadQueueError) as exc:
        raise StartError(f"the bundles left from before cannot be resumed: {exc}") from None
    if interrupted:
        log.info(
            "%d bundle(s) cut short by the last stop are complete with what they hold",
            len(interrupted),
        )
    stage = BundleStage(
        "bundles",
        daemon.stop_event,
        store=store,
        sealer=sealer,
        deadline=settings.camera.bundle_deadline,
        closed=closed,
        records=kept.offsite is None,
        on_fatal=daemon.on_fatal,
    )
    return Bundles(store, sealer, stage)
