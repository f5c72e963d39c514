"""The cameras as the daemon runs them: the registry, the prober and the snapshot stage."""

from __future__ import annotations

from dataclasses import dataclass

from pylib.runtime.daemon import Daemon
from snapshot_processor.camera.networks import CameraNetworks
from snapshot_processor.camera.prober import CameraProber
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.camera.stage import SnapshotStage
from snapshot_processor.config import Settings


@dataclass(frozen=True)
class Cameras:
    registry: CameraRegistry
    prober: CameraProber
    stage: SnapshotStage


def build(settings: Settings, daemon: Daemon) -> Cameras:
    section = settings.camera
    registry = CameraRegistry(
        settings.cameras,
        timeout=section.timeout,
        retries=section.retries,
        breaker_failures=section.breaker_failures,
        breaker_seconds=section.breaker_seconds,
        networks=CameraNetworks(section.networks),
    )
    prober = CameraProber(
        "prober",
        daemon.stop_event,
        cameras=registry,
        interval=section.probe_interval,
        on_fatal=daemon.on_fatal,
    )
    registry.observer = prober
    stage = SnapshotStage(
        "snapshot",
        daemon.stop_event,
        cameras=registry,
        root=settings.snapshots_root_dir,
        per_trigger=section.snapshots_per_trigger,
        interval=section.snapshot_interval,
        waiting=section.queue,
        workers=section.workers,
        bundle_window=section.bundle_window,
        on_fatal=daemon.on_fatal,
    )
    return Cameras(registry, prober, stage)
