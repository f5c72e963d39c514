"""Assembles the daemon from its parts: a flat list of start-up steps, stopped in reverse."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from pylib.amqp.consumer import AmqpListener, RejectedMessageError
from pylib.amqp.outbox import attached_files
from pylib.amqp.params import connection_parameters
from pylib.amqp.publisher import AmqpPublisher
from pylib.chain.envelope import Envelope, new_id
from pylib.chain.settle import Publication
from pylib.chain.sockets import Sender
from pylib.chain.stage import Relay, Stage
from pylib.chain.topology import Chain
from pylib.http import HttpServer, TokenAuth
from pylib.observe.logs import printable
from pylib.runtime.daemon import Daemon, StartError
from pylib.runtime.pings import HealthPinger
from pylib.runtime.worker import Worker, WorkerStartError
from pylib.upload.destination import Destination
from pylib.upload.queue import UploadQueue, UploadQueueError
from pylib.upload.uploader import Uploader
from snapshot_processor.camera.networks import CameraNetworks
from snapshot_processor.camera.prober import CameraProber, CameraStatus
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.camera.stage import SnapshotStage
from snapshot_processor.config import Device, Settings
from snapshot_processor.contract import event, exchanges
from snapshot_processor.contract.messages import TriggerMessage
from snapshot_processor.contract.publication import EventBuilder
from snapshot_processor.contract.trigger import TriggerError, parse_trigger
from snapshot_processor.detection.registry import make_detector, make_guard
from snapshot_processor.detection.stage import DetectionStage
from snapshot_processor.ingest.ftp import FtpOptions, FtpServerThread
from snapshot_processor.ingest.stage import DiskBounds, UploadStage, camera_folder
from snapshot_processor.ops.recent import RecentEvents
from snapshot_processor.ops.routes import (
    Camera,
    HealthReport,
    Ops,
    SnapshotRefusedError,
    build_router,
    metrics_router,
)
from snapshot_processor.storage.offsite import StorageStage
from snapshot_processor.storage.retention import Retention, RetentionPolicy

log = logging.getLogger(__name__)


class App:
    """The running daemon: its settings, its threads and the order they start in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon = Daemon(settings.app_name, shutdown_timeout=settings.shutdown_timeout)
        self.workers: list[Worker] = []

    @property
    def stop_event(self) -> threading.Event:
        """Set when the process begins to stop."""
        return self.daemon.stop_event

    def report(self) -> HealthReport:
        """Healthy while every thread is alive, both broker connections are up and the
        outbox can be written; other troubles (a camera down, a full upload queue) are
        warnings: shown everywhere, but a restart would not mend them."""
        problems = [
            f"thread {worker.name} is dead" for worker in self.workers if not worker.healthy
        ]
        warnings: list[str] = []
        detail: dict[str, Any] = {
            "threads": {worker.name: worker.healthy for worker in self.workers},
            "broker": {},
        }
        for worker in self.workers:
            troubles = worker.troubles()
            if isinstance(worker, AmqpPublisher):
                connected = worker.connected.is_set()
                detail["broker"]["publisher"] = connected
                detail["outbox"] = {
                    "depth": worker.outbox_depth,
                    "writable": worker.outbox_writable,
                }
                if not connected:
                    problems.append("publisher cannot reach the broker; events wait in the outbox")
                problems.extend(troubles)
            elif isinstance(worker, AmqpListener):
                consuming = worker.consuming.is_set()
                detail["broker"]["listener"] = consuming
                if not consuming and not troubles:
                    problems.append("listener cannot reach the broker; no triggers arrive")
                problems.extend(troubles)
            else:
                warnings.extend(troubles)
        detail["uploads"] = self.uploads()
        detail["cameras"] = {key: status.as_dict() for key, status in self.camera_status().items()}
        return HealthReport(not problems, problems, warnings, detail)

    def health(self) -> tuple[bool, str]:
        """For the health pings: healthy or not, and what is wrong in one line."""
        report = self.report()
        said = report.problems + report.warnings
        if said:
            return report.ok, "; ".join(said)
        return True, f"{len(self.workers)} threads running, broker connected"

    def init_metrics(self) -> None:
        """Serve Prometheus counters on METRICS_PORT too, when it is set: the same server
        and rules as HTTP_PORT, with only ``/metrics``."""
        settings = self.settings
        port, address = settings.ops.metrics_port, settings.ops.metrics_address
        if not port:
            return
        token = settings.ops.http_token.get_secret_value() if settings.ops.http_token else None
        server = HttpServer(
            "metrics",
            self.stop_event,
            address=address,
            port=port,
            router=metrics_router(),
            auth=TokenAuth(token),
            allowed_hosts=settings.ops.http_allowed_hosts,
        )

        def start() -> None:
            try:
                server.start()
            except WorkerStartError as exc:
                server.stop_and_join(5)
                raise StartError(str(exc)) from None
            log.info("metrics on http://%s:%d/metrics", address, port)

        self.daemon.add_step("metrics", start, server.stop_and_join)

    def init_health(self) -> None:
        """Ping healthchecks / Cronitor on a schedule when configured."""
        settings = self.settings
        hc_url = settings.ops.hc_ping_url.get_secret_value() if settings.ops.hc_ping_url else None
        cronitor = (
            settings.ops.cronitor_monitor_key.get_secret_value()
            if settings.ops.cronitor_monitor_key
            else None
        )
        if not (hc_url or cronitor):
            return
        pinger = HealthPinger(
            hc_url, cronitor, is_healthy=self.health, interval=settings.ops.health_ping_interval
        )

        def stop(timeout: float) -> bool:
            pinger.stop()
            return True

        self.daemon.add_step("health", pinger.start, stop)

    def params(self, role: str) -> pika.ConnectionParameters:
        """Connection parameters for one of our connections, named for the broker's UI."""
        settings = self.settings
        url = settings.broker.url.get_secret_value() if settings.broker.url else None
        return connection_parameters(
            url,
            settings.broker.server_address,
            connection_name=f"{settings.app_name} {settings.device_name} {role}",
        )

    def heartbeat(self) -> Publication:
        """The periodic heartbeat listing our inputs and outputs."""
        settings = self.settings
        return Publication(
            settings.broker.exchange,
            event.heartbeat_routing_key(settings.broker.device_topic),
            event.pack(
                event.heartbeat(
                    settings.inputs.values(),
                    settings.outputs.values(),
                    camera_health={
                        key: status.as_dict() for key, status in self.camera_status().items()
                    },
                )
            ),
        )

    def camera_status(self) -> dict[str, CameraStatus]:
        """What the prober knows of each camera (nothing before it exists)."""
        prober = getattr(self, "prober", None)
        return prober.status() if prober is not None else {}

    # --- the chain's stages, in the order they are declared in build() ------------------
    def ingest(self) -> list[Stage]:
        """Camera fetches, and the upload dir when cameras push images."""
        settings = self.settings
        registry = CameraRegistry(
            settings.cameras,
            timeout=settings.camera.timeout,
            retries=settings.camera.retries,
            breaker_failures=settings.camera.breaker_failures,
            breaker_seconds=settings.camera.breaker_seconds,
            networks=CameraNetworks(settings.camera.networks),
        )
        self.cameras = registry
        prober = CameraProber(
            "prober",
            self.stop_event,
            cameras=registry,
            interval=settings.camera.probe_interval,
            on_fatal=self.daemon.on_fatal,
        )
        registry.observer = prober
        self.prober = prober
        stages: list[Stage] = [
            SnapshotStage(
                "snapshot",
                self.stop_event,
                cameras=registry,
                root=settings.snapshots_root_dir,
                per_trigger=settings.camera.snapshots_per_trigger,
                interval=settings.camera.snapshot_interval,
                waiting=settings.camera.queue,
                workers=settings.camera.workers,
                on_fatal=self.daemon.on_fatal,
            )
        ]
        if settings.upload_cameras or settings.ingest.ftp_on:
            stages.append(
                UploadStage(
                    "upload",
                    self.stop_event,
                    root=settings.snapshots_root_dir,
                    upload_dir=settings.ingest_dir,
                    cameras=settings.upload_cameras,
                    max_bytes=settings.ingest.max_bytes,
                    settle=settings.ingest.settle_seconds,
                    stable=settings.ingest.stable_seconds,
                    create_dirs=settings.ingest.create_dirs,
                    bounds=DiskBounds(
                        stray_max_age=settings.ingest.stray_max_age,
                        stray_max_bytes=settings.ingest.stray_max_bytes,
                        quarantine_max_bytes=settings.ingest.quarantine_max_bytes,
                    ),
                    on_fatal=self.daemon.on_fatal,
                )
            )
        return stages

    def detection(self) -> list[Stage]:
        """Object detection, when it is on (otherwise left out of the chain)."""
        settings = self.settings
        if settings.detection.backend == "none":
            return []
        detector = make_detector(settings.detection)
        log.info("object detection with %s", detector.name)
        close = getattr(detector, "close", None)
        if callable(close):
            # Added before the chain, so it is closed after the chain has stopped.
            self.daemon.add_step("detector", lambda: None, lambda timeout: close() is None)
        return [
            DetectionStage(
                "detection",
                self.stop_event,
                detector=detector,
                guard=make_guard(settings.detection),
                annotate=settings.detection.annotate,
                on_fatal=self.daemon.on_fatal,
            )
        ]

    def storage(self) -> list[Stage]:
        """Off-site copies, when a destination is configured (otherwise left out).

        The upload queue and the uploader are added to the daemon here, before the
        chain: they start before it and stop after it, so nothing queued is cut off.
        """
        settings = self.settings
        destinations: dict[str, Destination] = {}
        # The cloud clients are imported only when configured: they cost 30 MB of memory.
        if settings.storage.drive_on:
            from snapshot_processor.storage.drive.destination import DriveDestination

            assert settings.storage.google_drive_folder
            assert settings.storage.google_drive_credentials
            drive = DriveDestination(
                settings.storage.google_drive_folder,
                settings.storage.google_drive_credentials,
                settings.storage.google_drive_api_url,
                settings.storage.drive_archive_after_hours,
            )
            destinations[drive.name] = drive
        if settings.storage.s3_bucket:
            from snapshot_processor.storage.s3 import S3Destination

            s3 = S3Destination(
                settings.storage.s3_bucket,
                settings.storage.s3_prefix,
                region=settings.detection.aws_default_region,
            )
            destinations[s3.name] = s3
        if not destinations:
            return []
        try:
            queue = UploadQueue(
                settings.upload_queue_path, max_attempts=settings.storage.upload_max_attempts
            )
        except (UploadQueueError, OSError) as exc:
            raise StartError(f"the upload queue cannot be opened: {exc}") from None
        self.upload_queue = queue

        def close(timeout: float) -> bool:
            queue.close()
            return True

        self.daemon.add_step("upload queue", lambda: None, close)
        uploader = Uploader(queue, destinations, self.stop_event, on_fatal=self.daemon.on_fatal)
        self.uploader = uploader
        self.daemon.add(uploader)
        log.info("cloud storage: %s", ", ".join(destinations))
        return [
            StorageStage(
                "storage",
                self.stop_event,
                queue=queue,
                destinations=destinations,
                wake_uploader=uploader.wake,
                on_fatal=self.daemon.on_fatal,
            )
        ]

    def uploads(self) -> dict[str, Any] | None:
        """The upload queue for health and the page (None without cloud storage)."""
        uploader = getattr(self, "uploader", None)
        if uploader is None:
            return None
        status = uploader.status()
        return {
            "depth": status.depth,
            "oldest_seconds": status.oldest_seconds,
            "parked": status.parked,
            "failing": status.failing,
        }

    def retention(self) -> Retention:
        """Local retention: never a file the upload queue or the outbox still needs."""
        settings = self.settings
        queue = getattr(self, "upload_queue", None)

        def pending() -> set[str]:
            # Read each sweep; a failure to read skips the sweep (nothing removed).
            needed = attached_files(settings.outbox_path)
            if queue is not None:
                needed |= queue.pending_paths()
            return needed

        return Retention(
            settings.snapshots_root_dir,
            RetentionPolicy.of(
                settings.storage.retention_days,
                settings.storage.retention_max_bytes,
                settings.storage.retention_min_free_bytes,
            ),
            self.stop_event,
            pending=pending,
            interval=settings.storage.retention_interval,
            on_fatal=self.daemon.on_fatal,
        )

    def events(self) -> Stage:
        """Snapshots (with detections) become image events, and are recorded for the page."""
        settings = self.settings
        builder = EventBuilder(
            settings.broker.exchange,
            settings.broker.device_topic,
            settings.device_name,
            recent=self.recent,
        )
        return Relay("events", self.stop_event, builder, fold=True, on_fatal=self.daemon.on_fatal)

    def publisher(self) -> Stage:
        """The publisher: outbox, confirms, heartbeats, acks back up the chain."""
        settings = self.settings

        def setup(channel: BlockingChannel) -> None:
            exchanges.declare_exchanges(channel, settings)

        return AmqpPublisher(
            "publisher",
            self.stop_event,
            params=self.params("publisher"),
            setup=setup,
            outbox_path=settings.outbox_path,
            outbox_max=settings.broker.outbox_max_events,
            periodic=self.heartbeat,
            periodic_interval=settings.broker.heartbeat_interval,
            on_fatal=self.daemon.on_fatal,
        )

    # --- what feeds the chain ------------------------------------------------------------
    def decode_trigger(self, body: bytes, properties: pika.BasicProperties) -> Envelope:
        """A trigger body to the envelope the snapshot stage takes; bad ones are rejected."""
        try:
            trigger = parse_trigger(body, self.cameras.keys, self.settings.broker.trigger_max_bytes)
        except TriggerError as exc:
            raise RejectedMessageError(exc.reason, str(exc)) from None
        return trigger.message().envelope()

    def listener(self, forward_to: str) -> Worker:
        """The trigger consumer, feeding the snapshot stage."""
        settings = self.settings

        def setup(channel: BlockingChannel) -> str:
            return exchanges.declare_trigger_queue(channel, settings)

        return AmqpListener(
            "listener",
            self.stop_event,
            params=self.params("listener"),
            setup=setup,
            decode=self.decode_trigger,
            forward_to=forward_to,
            prefetch=settings.prefetch,
            on_fatal=self.daemon.on_fatal,
        )

    def ftp(self) -> Worker | None:
        """The FTP server, only with a password: never anonymous."""
        settings = self.settings
        if not settings.ingest.ftp_on:
            return None
        assert settings.ingest.ftp_pass is not None
        options = FtpOptions(
            root=settings.snapshots_root_dir,
            upload_dir=settings.ingest_dir,
            user=settings.ingest.ftp_user,
            password=settings.ingest.ftp_pass.get_secret_value(),
            listen_address=settings.ingest.ftp_listen_address,
            port=settings.ingest.ftp_port,
            passive_ports=settings.ingest.ftp_passive_ports,
            masquerade_address=settings.ingest.ftp_masquerade_address,
            max_connections=settings.ingest.ftp_max_connections,
            max_connections_per_ip=settings.ingest.ftp_max_connections_per_ip,
            tls_cert=settings.ingest.ftp_tls_cert,
            tls_key=settings.ingest.ftp_tls_key,
            tls_required=settings.ingest.ftp_tls_required,
            ban_after=settings.ingest.ftp_ban_after,
            ban_seconds=settings.ingest.ftp_ban_seconds,
            login_delay=settings.ingest.ftp_login_delay,
            reserved_for_sessions=settings.ingest.ftp_reserved_sessions,
            login_timeout=settings.ingest.ftp_login_timeout,
            max_failed_logins_per_minute=settings.ingest.ftp_max_failed_logins_per_minute,
            camera_folders=tuple(
                (device.key, camera_folder(device.LOCATION)) for device in settings.upload_cameras
            ),
        )
        return FtpServerThread("ftp", self.stop_event, options, on_fatal=self.daemon.on_fatal)

    def init_recent(self) -> None:
        """The recent events the status page and the API show (closed after the chain)."""
        path = self.settings.recent_events_path
        try:
            recent = RecentEvents(path, keep=self.settings.ops.recent_events)
        except (OSError, sqlite3.Error) as exc:
            raise StartError(f"recent events {path} cannot be opened: {exc}") from None
        self.recent = recent

        def close(timeout: float) -> bool:
            recent.close()
            return True

        self.daemon.add_step("recent events", lambda: None, close)

    def http(self, snapshot_inbox: str) -> Worker | None:
        """The HTTP server: health, metrics, the API and the status page (HTTP_PORT 0: off)."""
        settings = self.settings
        if not settings.ops.http_port:
            return None
        token = settings.ops.http_token.get_secret_value() if settings.ops.http_token else None
        requests = SnapshotRequests(
            snapshot_inbox, {d.key: d.LOCATION for d in settings.cameras}, self.cameras
        )
        ops = Ops(
            cameras=[Camera(d.key, d.LOCATION, d.VENDOR) for d in settings.cameras],
            health=self.report,
            recent=self.recent,
            camera_health=self.camera_status,
            take_snapshot=requests.take,
            uploads=self.uploads,
        )
        auth = TokenAuth(token)
        return HttpServer(
            "http",
            self.stop_event,
            address=settings.ops.http_bind,
            port=settings.ops.http_port,
            router=build_router(ops, auth),
            auth=auth,
            allowed_hosts=settings.ops.http_allowed_hosts,
            on_close=requests.close,
            on_fatal=self.daemon.on_fatal,
        )

    def build(self) -> Daemon:
        """Register every start-up step in order; the chain is declared here, once."""
        for line in startup_summary(self.settings):
            log.info("%s", line)
        self.init_metrics()
        self.init_health()
        self.init_recent()
        chain = Chain(
            "chain",
            [
                self.ingest(),
                *self.detection(),
                *self.storage(),
                self.events(),
                self.publisher(),
            ],
            shutdown_timeout=self.settings.shutdown_timeout,
        )
        chain.add_source(self.listener(forward_to=chain.stage("snapshot").inbox))
        for source in (self.ftp(), self.http(chain.stage("snapshot").inbox)):
            if source is not None:
                chain.add_source(source)
        self.chain = chain
        self.daemon.add(chain)
        # Beside the chain: they watch cameras and the disk, and stop before it.
        retention = self.retention()
        self.daemon.add(self.prober)
        self.daemon.add(retention)
        self.workers = [*chain.workers, self.prober, retention]
        uploader = getattr(self, "uploader", None)
        if uploader is not None:
            self.workers.append(uploader)
        return self.daemon


class SnapshotRequests:
    """Snapshots asked for over HTTP: triggers sent into the chain from request threads.

    They carry no ack (nothing to settle with the broker) and their first event id is
    chosen here, so the caller learns it at once. The one socket is used under a lock
    (which is the memory barrier ZeroMQ asks for when a socket changes threads).
    """

    def __init__(self, inbox: str, labels: dict[str, str], cameras: CameraRegistry) -> None:
        self.inbox = inbox
        self.labels = labels
        self.cameras = cameras
        self._lock = threading.Lock()
        self._sender: Sender | None = None
        self._closed = False

    def take(self, camera_key: str) -> str:
        """Send a trigger for ``camera_key``; its first event id."""
        if self.cameras.known_spec(camera_key) is None:
            raise SnapshotRefusedError(
                "the camera's address is not known yet: it has no OUTPUT_n_ADDRESS and "
                "comes with its triggers, of which none has arrived since the start",
                409,
            )
        now = time.time()
        trigger = TriggerMessage(
            camera_key=camera_key,
            device_label=self.labels.get(camera_key, camera_key),
            timestamp=int(now),
            received=now,
            event_id=new_id(),
        )
        with self._lock:
            if self._closed:
                raise SnapshotRefusedError("the daemon is stopping")
            if self._sender is None:
                self._sender = Sender(self.inbox, linger=0)
            if not self._sender.send(trigger.envelope(), block=False):
                raise SnapshotRefusedError("the snapshot stage is busy; try again")
        assert trigger.event_id is not None
        return trigger.event_id

    def close(self) -> None:
        """Close the socket (the HTTP server has stopped: no request comes any more)."""
        with self._lock:
            self._closed = True
            if self._sender is not None:
                self._sender.close()
                self._sender = None


def startup_summary(settings: Settings) -> list[str]:
    """What this daemon will do, for the log at start: cameras, FTP, detection, storage."""

    def cameras(devices: list[Device]) -> str:
        # Keys come from configuration, but end up in log lines: escaped like outside text.
        return ", ".join(f'"{printable(d.key)}" ({d.VENDOR})' for d in devices) or "none"

    inputs = ", ".join(f'"{printable(d.key)}"' for d in settings.upload_cameras) or "none"
    ftp = (
        f"on at {settings.ingest.ftp_listen_address}:{settings.ingest.ftp_port}"
        if settings.ingest.ftp_on
        else "off (no FTP_PASS, or FTP_ENABLED=false)"
    )
    backend = settings.detection.backend
    detection = "off" if backend == "none" else backend
    if backend == "rekognition":
        detection += f" in {settings.detection.aws_region}"
    cloud = [
        name
        for name, on in (
            (
                f'Google Drive folder "{printable(settings.storage.google_drive_folder or "")}"',
                settings.storage.drive_on,
            ),
            (
                f"S3 bucket {printable(settings.storage.s3_bucket or '')}",
                bool(settings.storage.s3_bucket),
            ),
        )
        if on
    ]
    http = (
        f"http://{settings.ops.http_bind}:{settings.ops.http_port}/ "
        + (
            "(token required)"
            if settings.ops.http_token
            else "(open to this machine, as HTTP_TOKEN is not set)"
        )
        if settings.ops.http_port
        else "off"
    )
    return [
        f"camera outputs (fetched on trigger): {cameras(settings.cameras)}",
        f"camera inputs (upload images): {inputs}; FTP {ftp}",
        f"detection: {detection}",
        f"storage: {printable(settings.snapshots_root_dir.absolute())}, "
        f"uploads in {printable(settings.ingest_dir.absolute())}, "
        f"outbox {printable(settings.outbox_path.absolute())}",
        f"cloud storage: {', '.join(cloud) or 'off'}; status page and API: {http}",
    ]
