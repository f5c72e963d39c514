"""The daemon: the chain in order, its sources, and what runs beside it; each feature builds
its own parts from its settings section (``<feature>/feature.py``)."""

from __future__ import annotations

import logging
from typing import Any

from pylib.chain.topology import Chain
from pylib.runtime.daemon import Daemon
from pylib.runtime.health import Health
from pylib.runtime.worker import Worker
from snapshot_processor.bundle import feature as bundle
from snapshot_processor.camera import feature as camera
from snapshot_processor.config import Settings
from snapshot_processor.contract import feature as contract
from snapshot_processor.detection import feature as detection
from snapshot_processor.ingest import feature as ingest
from snapshot_processor.mqtt import feature as mqtt
from snapshot_processor.ops import feature as ops
from snapshot_processor.ops.routes import HealthReport
from snapshot_processor.ops.summary import no_camera_hint, startup_summary
from snapshot_processor.storage import feature as storage

log = logging.getLogger(__name__)


class App:
    """The running daemon: its settings, its threads and the order they start in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon = Daemon(settings.app_name, shutdown_timeout=settings.shutdown_timeout)
        # Every supervised thread, for health; filled by build().
        self.workers: list[Worker] = []

    def build(self) -> Daemon:
        """Register every part in start-up order; the chain is declared here, once."""
        settings, daemon = self.settings, self.daemon
        for line in startup_summary(settings):
            log.info("%s", line)
        hint = no_camera_hint(settings)
        if hint is not None:
            log.warning("%s", hint)
        ops.metrics_listener(settings, daemon)
        ops.health_pings(settings, daemon, self.health)
        self.recent = ops.recent_events(settings, daemon)
        # Verdicts on events (detection on): the bus, the page and Home Assistant give them.
        verdicts = detection.feedback(settings, daemon, self.recent)
        record = bundle.open_store(settings, daemon)
        self.cameras = cameras = camera.build(settings, daemon)
        # Beside the chain, best effort; added before it, so it stops after its last event.
        shown = mqtt.build(
            settings,
            daemon,
            cameras=cameras,
            health=self.health_lines,
            verdicts=verdicts.record if verdicts else None,
        )
        fed = ingest.build(settings, daemon)
        kept = storage.build(settings, daemon, record)
        self.bundles = bundles = bundle.build(
            settings, daemon, record, kept, closed=cameras.stage.bundles.closed
        )
        chain = Chain(
            "chain",
            [
                # One tier, side by side: what cameras give, fetched and pushed.
                [cameras.stage, *([fed.stage] if fed.stage else [])],
                # Off-site first: every file is queued before detection runs.
                *kept.stages,
                *detection.build(settings, daemon),
                bundles.stage,
                contract.events(settings, daemon, self.recent, [shown.output.saw] if shown else []),
                contract.publisher(
                    settings, daemon, contract.heartbeat(settings, self.camera_health)
                ),
            ],
            shutdown_timeout=settings.shutdown_timeout,
        )
        snapshot_inbox = chain.stage("snapshot").inbox
        if shown is not None:
            mqtt.press_into(shown, settings, cameras, snapshot_inbox)
        sources = [
            contract.listener(settings, daemon, cameras.registry.keys, forward_to=snapshot_inbox),
            fed.ftp,
            ops.http_server(
                settings,
                daemon,
                cameras=cameras,
                recent=self.recent,
                report=self.report,
                snapshot_inbox=snapshot_inbox,
                parked_uploads=kept.parked_uploads if kept.queue is not None else None,
                bundles=ops.bundle_listing(bundles.sealer, kept.parked_uploads),
                feedback=verdicts.source("page") if verdicts else None,
            ),
        ]
        for source in sources:
            if source is not None:
                chain.add_source(source)
        daemon.add(chain)
        judged = detection.verdicts_from_the_bus(settings, daemon, verdicts) if verdicts else []
        for worker in judged:
            daemon.add(worker)
        # Beside the chain: they watch cameras and the disk, and stop before it.
        daemon.add(cameras.prober)
        daemon.add(kept.retention)
        self.workers = [*chain.workers, cameras.prober, kept.retention, *judged]
        if kept.uploader is not None:
            self.workers.append(kept.uploader)
        if shown is not None:
            self.workers.extend([shown.link, shown.output])
        return daemon

    def report(self) -> HealthReport:
        """Healthy while every thread is alive, both broker connections are up and the outbox
        can be written; other troubles are warnings, as a restart would not mend them."""
        whole = Health.combine(worker.health() for worker in self.workers)
        detail = {"threads": {}, "broker": {}, "uploads": None, "cameras": {}, **whole.detail}
        return HealthReport(whole.ok, whole.problems, whole.warnings, detail)

    def health_lines(self) -> tuple[bool, list[str], list[str]]:
        """Healthy or not, the problems and the warnings (for Home Assistant)."""
        report = self.report()
        return report.ok, report.problems, report.warnings

    def health(self) -> tuple[bool, str]:
        """For the health pings: healthy or not, and what is wrong in one line."""
        report = self.report()
        said = report.problems + report.warnings
        if said:
            return report.ok, "; ".join(said)
        return True, f"{len(self.workers)} threads running, broker connected"

    def uploads(self) -> dict[str, Any] | None:
        """The upload queue at a glance (None without cloud storage)."""
        found = self.report().detail["uploads"]
        return found if isinstance(found, dict) else None

    def camera_health(self) -> dict[str, dict[str, object]]:
        """Each camera's state, for the heartbeat."""
        return {key: status.as_dict() for key, status in self.cameras.prober.status().items()}
