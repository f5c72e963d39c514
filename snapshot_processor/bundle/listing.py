"""Recent bundles as ``/api/bundles`` and the status page show them: plain dicts built from
the stored bundles, with why each is not sealed yet (its parked uploads named, as a parked
file is never copied and so holds the seal back for good)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pylib.observe.redact import redact
from snapshot_processor.bundle.manifest import best_frame, iso
from snapshot_processor.bundle.seal import describe_wait
from snapshot_processor.bundle.store import BEFORE, FRAME, Bundle
from snapshot_processor.storage.files import bundle_folder

# Why each parked one of the given local paths is parked (``<destination>: <reason>``).
ParkedReasons = Callable[[Collection[str]], Mapping[str, str]]


def bundle_views(
    bundles: Sequence[Bundle],
    destinations: Sequence[str],
    parked: ParkedReasons | None,
    root: Path,
) -> list[dict[str, Any]]:
    """Each of ``bundles`` (in their order) as the API gives it; ``destinations`` are the
    off-site copies a seal waits for, ``root`` the data root its folder is under."""
    unsealed = [f.path for b in bundles if b.sealed is None for f in b.files]
    # One question for every bundle shown, not one per bundle: the page asks every 5 s.
    reasons = parked(unsealed) if parked is not None and unsealed else {}
    return [_view(bundle, destinations, reasons, root) for bundle in bundles]


def _view(
    bundle: Bundle, destinations: Sequence[str], parked: Mapping[str, str], root: Path
) -> dict[str, Any]:
    best = best_frame(bundle)
    return {
        "bundle_id": bundle.bundle_id,
        "sensor": bundle.sensor,
        "opened": iso(bundle.opened),
        "state": bundle.state,
        "why_not_sealed": why_not_sealed(bundle, destinations, parked),
        "complete_by": bundle.ended_by,
        "cameras": [
            {
                "key": camera.camera,
                "label": camera.label,
                "frames_asked": camera.expected,
                "frames_taken": camera.taken,
                # A camera's own words may carry its address with credentials.
                "failure": None if camera.failure is None else redact(camera.failure),
            }
            for camera in bundle.cameras
        ],
        # As its manifest lists them: snapshots and the stills from before the trigger.
        "frames": sum(1 for f in bundle.files if f.kind in (FRAME, BEFORE)),
        "failed": sum(1 for camera in bundle.cameras if camera.failure),
        "offsite_seconds": None
        if bundle.first_offsite is None
        else round(max(0.0, bundle.first_offsite - bundle.opened), 3),
        "sealed": iso(bundle.sealed),
        "storage_path": str(bundle_folder(root, bundle.group)),
        "best_event_id": None if best is None else best.event_id,
    }


def why_not_sealed(
    bundle: Bundle, destinations: Sequence[str], parked: Mapping[str, str]
) -> str | None:
    """What the seal waits for, then each distinct reason a file of it is parked; None once
    sealed."""
    waiting = describe_wait(bundle, list(destinations))
    if waiting is None:
        return None
    reasons = dict.fromkeys(parked[f.path] for f in bundle.files if f.path in parked)
    return redact("; ".join([waiting, *(f"parked: {reason}" for reason in reasons)]))
