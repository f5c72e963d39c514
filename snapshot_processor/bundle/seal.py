"""The receipt: once every file of a complete bundle has a verified copy at every
destination, its manifest (with each file's checksums and where it was verified) is
written into its folder and uploaded last; when that is copied too, the bundle is sealed.
Without cloud storage a bundle is sealed as soon as its manifest is written."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from pathlib import Path

from prometheus_client import Counter, Histogram

from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueueError
from snapshot_processor.bundle.manifest import iso, manifest
from snapshot_processor.bundle.store import (
    MANIFEST,
    UPLOADING,
    Bundle,
    BundleStore,
    BundleStoreError,
    NewFile,
)
from snapshot_processor.storage.files import bundle_folder, write_atomically
from snapshot_processor.storage.offsite import Offsite

log = logging.getLogger(__name__)

BUNDLE_OFFSITE_SECONDS = Histogram(
    "bundle_offsite_seconds",
    "From a bundle's first trigger to its first file verified off-site",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
BUNDLES_SEALED = Counter("bundles_sealed_total", "Bundles sealed: every file copied and verified")
BUNDLE_SEAL_FAILURES = Counter(
    "bundle_seal_failures_total", "Seal steps that failed (tried again at the next upload or start)"
)

MANIFEST_NAME = "manifest.json"
# A file recorded this recently may be on its way into the queue: a sweep leaves it alone.
SWEEP_GRACE = 60.0
# Sealed bundles listed on the page and in /api/bundles before the oldest are forgotten.
KEEP_SEALED = 500


class Sealer:
    """Seals bundles in ``store`` whose files ``offsite`` has copied (see the module doc)."""

    def __init__(self, store: BundleStore, root: Path, offsite: Offsite | None) -> None:
        self.store = store
        self.root = root
        self.offsite = offsite
        self._lock = threading.Lock()

    @property
    def destinations(self) -> list[str]:
        return list(self.offsite.destinations) if self.offsite is not None else []

    def folder(self, bundle: Bundle) -> Path:
        return bundle_folder(self.root, bundle.group)

    def uploaded(self, destination: str, item: UploadItem) -> None:
        """A file is verified at ``destination`` (the uploader's thread)."""
        if item.group is None:
            return  # of no bundle
        now = time.time()
        found = self.store.copied(item.path, destination, item.group, now)
        if found is None:
            return
        bundle_id, first = found
        if first:
            bundle = self.store.bundle(bundle_id)
            if bundle is not None:
                BUNDLE_OFFSITE_SECONDS.observe(max(0.0, now - bundle.opened))
        self.check(bundle_id)

    def check(self, bundle_id: str) -> None:
        """Take the next step towards the seal if it is due; never raises."""
        try:
            with self._lock:  # one manifest per bundle, whichever thread gets there first
                self._check(bundle_id)
        except (BundleStoreError, UploadQueueError, OSError) as exc:
            BUNDLE_SEAL_FAILURES.inc()
            log.warning("bundle %s: sealing waits: %s", bundle_id, exc)

    def resume(self) -> None:
        """At start, before the uploader: queue what is not queued for a destination (one
        added since, or a manifest whose queueing failed), and take each bundle's next step."""
        self._catch_up(older_than=None)  # nothing else runs yet: every file is looked at

    def sweep(self) -> None:
        """Now and then: a file whose queueing failed (a manifest, an annotated copy) is
        queued again, and each bundle's next step taken."""
        try:
            self._catch_up(older_than=SWEEP_GRACE)
        except (BundleStoreError, UploadQueueError) as exc:
            BUNDLE_SEAL_FAILURES.inc()
            log.warning("bundles not swept: %s", exc)

    def _catch_up(self, *, older_than: float | None) -> None:
        """Queue each file of a bundle not sealed that is neither queued for a destination
        nor copied there. Read in this order, pending uploads before each bundle: a copy is
        recorded before its upload leaves the queue, and a file is queued before it is
        recorded, so only a file recorded in between could be queued twice; files younger
        than ``older_than`` seconds are left alone for that."""
        ids = self.store.ids(UPLOADING)
        if self.offsite is not None:
            pending = {name: self.offsite.queue.pending_paths(name) for name in self.destinations}
            cutoff = math.inf if older_than is None else time.time() - older_than
            for bundle_id in ids:
                bundle = self.store.bundle(bundle_id)
                if bundle is None:
                    continue
                missing = [
                    (name, self._item(bundle, Path(f.path), f.camera or "bundle", f.taken))
                    for f in bundle.files
                    if f.taken <= cutoff
                    for name in self.destinations
                    if name not in f.copies and f.path not in pending[name]
                ]
                if missing:
                    self.offsite.queue.add(missing)
                    self.offsite.wake_uploader()
                    log.info("bundle %s: %d upload(s) queued again", bundle_id, len(missing))
        for bundle_id in ids:
            self.check(bundle_id)

    def _check(self, bundle_id: str) -> None:
        bundle = self.store.bundle(bundle_id)
        if bundle is None or bundle.state != UPLOADING:
            return
        wanted = set(self.destinations)
        if any(not wanted <= f.copies.keys() for f in bundle.files):
            return  # still uploading (the manifest too, once it is written)
        if any(f.kind == MANIFEST for f in bundle.files):
            self._sealed(bundle)
            return
        folder = self.folder(bundle)
        receipt = {"destinations": sorted(wanted), "verified_at": iso(time.time())}
        link = self.offsite.folder_link(bundle.group) if self.offsite is not None else None
        # MD5s to hold against the destinations' (nothing to hold them against without one).
        sums = {f.path: _md5(Path(f.path)) for f in bundle.files} if wanted else {}
        text = json.dumps(manifest(bundle, folder, link, receipt=receipt, md5=sums), indent=2)
        path = folder / MANIFEST_NAME
        data = text.encode("utf-8")
        write_atomically(path, data)
        self.store.add_manifest(
            NewFile(bundle_id=bundle_id, path=path, kind=MANIFEST, taken=time.time(), data=data)
        )
        if self.offsite is None:
            self._sealed(bundle)
            return
        self.offsite.queue.add(
            [(name, self._item(bundle, path, "bundle", bundle.opened)) for name in wanted]
        )
        self.offsite.wake_uploader()

    def _sealed(self, bundle: Bundle) -> None:
        if not self.store.seal(bundle.bundle_id, time.time()):
            return
        BUNDLES_SEALED.inc()
        log.info(
            "bundle %s sealed: %d file(s) verified at %s",
            bundle.bundle_id,
            len(bundle.files) + (0 if any(f.kind == MANIFEST for f in bundle.files) else 1),
            ", ".join(self.destinations) or "no destination (kept here only)",
        )
        forgotten = self.store.forget_sealed(KEEP_SEALED, time.time())
        if forgotten:
            log.debug("forgot %d old sealed bundle(s)", forgotten)

    @staticmethod
    def _item(bundle: Bundle, path: Path, folder: str, taken: float) -> UploadItem:
        return UploadItem(path, path.name, folder, taken, bundle.group)


def _md5(path: Path) -> str | None:
    """The file's MD5 as the destinations checked it (None if it is gone by now)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def describe_wait(bundle: Bundle, destinations: list[str]) -> str | None:
    """Why a bundle is not sealed yet, for the page and the API; None once it is."""
    if bundle.sealed is not None:
        return None
    if bundle.completed is None:
        waiting = [c.camera for c in bundle.cameras if c.bursts > 0]
        return f"taking snapshots: {', '.join(waiting)}" if waiting else "taking detections"
    missing = sum(1 for f in bundle.files for name in destinations if name not in f.copies)
    if not destinations:
        return "writing its manifest"
    if missing:
        return f"{missing} upload(s) to {', '.join(destinations)} still to verify"
    return "uploading its manifest"
