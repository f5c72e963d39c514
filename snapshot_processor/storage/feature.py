"""Storage as the daemon runs it: the upload stage with its queue and uploader when a cloud
destination is configured, and local retention always."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pylib.amqp.outbox import attached_files
from pylib.chain.stage import Stage
from pylib.runtime.daemon import Daemon, StartError
from pylib.upload.queue import UploadQueue, UploadQueueError
from pylib.upload.uploader import Uploader
from snapshot_processor.bundle.store import BundleStore
from snapshot_processor.config import Settings
from snapshot_processor.storage.destinations import configured
from snapshot_processor.storage.offsite import Offsite, StorageStage
from snapshot_processor.storage.retention import Retention, RetentionPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Storage:
    """The storage stage, the uploader and off-site queue (absent without a destination;
    the bundle stage then records the bundles), and retention."""

    stages: list[Stage]
    uploader: Uploader | None
    retention: Retention
    queue: UploadQueue | None = None
    offsite: Offsite | None = None

    def parked_uploads(self, paths: Collection[str]) -> Mapping[str, str]:
        """Why each parked one of ``paths`` is parked, for the page; never raises."""
        try:
            return self.queue.parked_reasons(paths) if self.queue is not None else {}
        except UploadQueueError:
            return {}


def build(settings: Settings, daemon: Daemon, bundles: BundleStore) -> Storage:
    """Storage from its settings; the upload queue and uploader are added to the daemon
    before the chain, so they start before it and stop after it. Files of a bundle not
    sealed yet are kept from retention."""
    section = settings.storage
    destinations = configured(section, settings.detection.aws_default_region)
    queue = uploader = offsite = None
    stages: list[Stage] = []
    if destinations:
        try:
            queue = UploadQueue(
                settings.upload_queue_path, max_attempts=section.upload_max_attempts
            )
        except (UploadQueueError, OSError) as exc:
            raise StartError(f"the upload queue cannot be opened: {exc}") from None
        opened = queue

        def close(timeout: float) -> bool:
            opened.close()
            return True

        daemon.add_step("upload queue", lambda: None, close)
        uploader = Uploader(
            queue,
            destinations,
            daemon.stop_event,
            item_retry=section.UPLOAD_ITEM_RETRY,
            destination_retry=section.UPLOAD_DESTINATION_RETRY,
            on_fatal=daemon.on_fatal,
        )
        daemon.add(uploader)
        log.info("cloud storage: %s", ", ".join(destinations))
        offsite = Offsite(queue, destinations, uploader.wake)
        stages.append(
            StorageStage(
                "storage",
                daemon.stop_event,
                store=bundles,
                offsite=offsite,
                on_fatal=daemon.on_fatal,
            )
        )

    def pending() -> set[str]:
        # Read at each sweep; a failure to read skips it, so nothing is removed.
        needed = attached_files(settings.outbox_path) | bundles.unsealed_paths()
        if queue is not None:
            needed |= queue.pending_paths()
        return needed

    retention = Retention(
        settings.snapshots_root_dir,
        RetentionPolicy.of(
            section.retention_days, section.retention_max_bytes, section.retention_min_free_bytes
        ),
        daemon.stop_event,
        pending=pending,
        interval=section.retention_interval,
        on_fatal=daemon.on_fatal,
    )
    return Storage(stages, uploader, retention, queue, offsite)
