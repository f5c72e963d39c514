"""A bundle's manifest: what the bundle event carries and ``manifest.json`` holds. Every
frame with its camera, time, file, size, SHA-256, detections and off-site link once
copied; the cameras that fell short and why; the best frame."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pylib.observe.redact import redact
from snapshot_processor.bundle.store import ANNOTATED, BEFORE, FRAME, MANIFEST, Bundle, BundleFile

# How a bundle came to be complete, as the manifest says it.
ALL_CAMERAS = "all cameras"
DEADLINE = "deadline"
RESTART = "restart"


def iso(when: float | None) -> str | None:
    if when is None:
        return None
    moment = datetime.fromtimestamp(when, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def best_frame(bundle: Bundle) -> BundleFile | None:
    """The frame with the highest person confidence, else the first taken."""
    frames = [f for f in bundle.files if f.kind == FRAME]
    if not frames:
        return None
    people = [f for f in frames if f.person]
    if people:
        return max(people, key=lambda f: (f.person or 0.0, -f.taken))
    return min(frames, key=lambda f: (f.taken, f.camera or "", f.frame or 0))


def person_confidence(detections: list[dict[str, Any]] | None) -> float | None:
    """The highest confidence of a person among ``detections``; None without one."""
    found = [
        float(d["confidence"])
        for d in detections or []
        if d.get("person") and isinstance(d.get("confidence"), int | float)
    ]
    return max(found) if found else None


def manifest(
    bundle: Bundle,
    folder: Path,
    link: str | None,
    *,
    receipt: dict[str, Any] | None = None,
    md5: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The manifest of ``bundle``, kept in local ``folder`` and off-site at ``link``; with a
    ``receipt`` (when sealing) every file's checksums (``md5`` by path) and verified copies
    are added."""
    labels = {camera.camera: camera.label for camera in bundle.cameras}
    annotated = {f.event_id: f.path for f in bundle.files if f.kind == ANNOTATED}
    frames = [
        _frame(f, labels, annotated.get(f.event_id), link)
        for f in sorted(bundle.files, key=lambda f: (f.taken, f.camera or "", f.kind))
        if f.kind in (FRAME, BEFORE)
    ]
    best = best_frame(bundle)
    found: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "sensor": bundle.sensor,
        "opened": iso(bundle.opened),
        "completed": iso(bundle.completed),
        "complete_by": bundle.ended_by,
        "storage_path": str(folder),
        "storage_url": link,
        "cameras": [
            {
                "device_key": c.camera,
                "device_label": c.label,
                "frames_asked": c.expected,
                "frames_taken": c.taken,
            }
            for c in bundle.cameras
        ],
        "frames": frames,
        # A camera's words, redacted again: this goes on the wire and off-site.
        "failed": [
            {"device_key": c.camera, "device_label": c.label, "reason": redact(c.failure)}
            for c in bundle.cameras
            if c.failure
        ],
        "best": None
        if best is None
        else {
            "event_id": best.event_id,
            "device_key": best.camera,
            "frame": best.frame,
            "storage_path": best.path,
            "person_confidence": best.person,
        },
        "offsite_seconds": None
        if bundle.first_offsite is None
        else round(bundle.first_offsite - bundle.opened, 3),
    }
    if receipt is not None:
        found["receipt"] = {
            **receipt,
            "files": [
                {
                    "name": Path(f.path).name,
                    "kind": f.kind,
                    "size": f.size,
                    "sha256": f.sha256,
                    "md5": (md5 or {}).get(f.path),
                    "verified": {name: iso(at) for name, at in sorted(f.copies.items())},
                }
                for f in bundle.files
                if f.kind != MANIFEST
            ],
        }
    return found


def _frame(
    file: BundleFile, labels: dict[str, str], annotated: str | None, link: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "event_id": file.event_id,
        "kind": file.kind,
        "device_key": file.camera,
        "device_label": labels.get(file.camera or "", file.camera),
        "frame": file.frame,
        "time": iso(file.taken),
        "storage_path": file.path,
        "size": file.size,
        "sha256": file.sha256,
        "storage_url": link if file.copies else None,
    }
    if file.kind == FRAME:
        entry["detections"] = file.detections or []
        entry["person_confidence"] = file.person
        if annotated is not None:
            entry["annotated_path"] = annotated
    return entry
