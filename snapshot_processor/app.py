"""Assembles the daemon from its parts: a flat list of start-up steps, stopped in reverse."""

from __future__ import annotations

import logging
import threading

import pika
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import start_http_server

from pylib.amqp import connection_parameters
from pylib.amqp_listener import AmqpListener, RejectedMessageError
from pylib.amqp_publisher import AmqpPublisher, Publication
from pylib.daemon import Daemon
from pylib.envelope import Envelope
from pylib.health import HealthPinger
from pylib.relay import Relay, inproc
from pylib.worker import Worker
from snapshot_processor import broker, event
from snapshot_processor.cameras import CameraRegistry
from snapshot_processor.config import Settings
from snapshot_processor.detection.stage import DetectionStage
from snapshot_processor.detectors import make_detector, make_guard
from snapshot_processor.ftp import FtpOptions, FtpServerThread
from snapshot_processor.publication import EventBuilder
from snapshot_processor.snapshot import TRIGGER_KIND, SnapshotStage
from snapshot_processor.trigger import TriggerError, parse_trigger
from snapshot_processor.upload import UploadStage

# The chain's inproc addresses, upstream to downstream.
SNAPSHOT_INBOX = inproc("snapshot")
DETECT_INBOX = inproc("detection")
EVENTS_INBOX = inproc("events")
PUBLISH_INBOX = inproc("publisher")
ACK_INBOX = inproc("trigger-acks")

log = logging.getLogger(__name__)


# SHUTDOWN_TIMEOUT is shared out along the chain, stopped from its source down:
# listener 30 % (acks of triggers in flight), snapshot 30 %, detection 15 %, publisher
# 15 %, leaving a margin for the rest.


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

    def health(self) -> tuple[bool, str]:
        """Healthy while every thread is alive and both broker connections are up."""
        problems = [
            f"thread {worker.name} is dead" for worker in self.workers if not worker.healthy
        ]
        for worker in self.workers:
            if isinstance(worker, AmqpPublisher) and not worker.connected.is_set():
                problems.append("publisher cannot reach the broker; events wait in the outbox")
            if isinstance(worker, AmqpListener) and not worker.consuming.is_set():
                problems.append("listener cannot reach the broker; no triggers arrive")
        if problems:
            return False, "; ".join(problems)
        return True, f"{len(self.workers)} threads running, broker connected"

    def add_worker(self, worker: Worker) -> None:
        """Start ``worker`` as a step; it is stopped (and joined) in reverse order."""
        self.workers.append(worker)
        self.daemon.add(worker)

    def init_metrics(self) -> None:
        """Serve Prometheus counters when METRICS_PORT is set."""
        port = self.settings.metrics_port
        if not port:
            return

        def start() -> None:
            server, thread = start_http_server(port)
            self._metrics = (server, thread)
            log.info("metrics on port %d", port)

        def stop(timeout: float) -> bool:
            server, thread = self._metrics
            server.shutdown()
            server.server_close()
            thread.join(timeout)
            return not thread.is_alive()

        self.daemon.add_step("metrics", start, stop)

    def init_health(self) -> None:
        """Ping healthchecks / Cronitor on a schedule when configured."""
        settings = self.settings
        hc_url = settings.hc_ping_url.get_secret_value() if settings.hc_ping_url else None
        cronitor = (
            settings.cronitor_monitor_key.get_secret_value()
            if settings.cronitor_monitor_key
            else None
        )
        if not (hc_url or cronitor):
            return
        pinger = HealthPinger(
            hc_url, cronitor, is_healthy=self.health, interval=settings.health_ping_interval
        )

        def stop(timeout: float) -> bool:
            pinger.stop()
            return True

        self.daemon.add_step("health", pinger.start, stop)

    def params(self, role: str) -> pika.ConnectionParameters:
        """Connection parameters for one of our connections, named for the broker's UI."""
        settings = self.settings
        url = settings.rabbitmq_url.get_secret_value() if settings.rabbitmq_url else None
        return connection_parameters(
            url,
            settings.rabbitmq_server_address,
            connection_name=f"{settings.app_name} {settings.device_name} {role}",
        )

    def heartbeat(self) -> Publication:
        """The periodic heartbeat listing our inputs and outputs."""
        settings = self.settings
        return Publication(
            settings.rabbitmq_exchange,
            event.heartbeat_routing_key(settings.rabbitmq_device_topic),
            event.pack(event.heartbeat(settings.inputs.values(), settings.outputs.values())),
        )

    def init_publisher(self) -> None:
        """The publisher: outbox, confirms, heartbeats. Starts first so nothing waits on it."""
        settings = self.settings

        def setup(channel: BlockingChannel) -> None:
            broker.declare_exchanges(channel, settings)

        self.add_worker(
            AmqpPublisher(
                "publisher",
                self.stop_event,
                params=self.params("publisher"),
                setup=setup,
                outbox_path=settings.outbox_path,
                outbox_max=settings.outbox_max_events,
                inbox=PUBLISH_INBOX,
                ack_to=ACK_INBOX,
                periodic=self.heartbeat,
                periodic_interval=settings.heartbeat_interval,
                flush_timeout=settings.shutdown_timeout * 0.15,
                on_fatal=self.daemon.on_fatal,
            )
        )

    def init_events(self) -> None:
        """Snapshots (with detections) become image events."""
        settings = self.settings
        builder = EventBuilder(
            settings.rabbitmq_exchange, settings.rabbitmq_device_topic, settings.device_name
        )
        self.add_worker(
            Relay(
                "events",
                self.stop_event,
                builder,
                inbox=EVENTS_INBOX,
                outbox=PUBLISH_INBOX,
                on_fatal=self.daemon.on_fatal,
            )
        )

    @property
    def after_snapshot(self) -> str:
        """Where fetched and uploaded snapshots go next: detection, when it is on."""
        return EVENTS_INBOX if self.settings.detection_backend == "none" else DETECT_INBOX

    def init_detection(self) -> None:
        """Object detection between the cameras and the events; off, snapshots skip it."""
        settings = self.settings
        if settings.detection_backend == "none":
            return
        detector = make_detector(settings)
        log.info("object detection with %s", detector.name)
        close = getattr(detector, "close", None)
        if callable(close):
            self.daemon.add_step("detector", lambda: None, lambda timeout: close() is None)
        self.add_worker(
            DetectionStage(
                "detection",
                self.stop_event,
                detector=detector,
                guard=make_guard(settings),
                inbox=DETECT_INBOX,
                outbox=EVENTS_INBOX,
                annotate=settings.detection_annotate,
                stop_timeout=settings.shutdown_timeout * 0.15,
                on_fatal=self.daemon.on_fatal,
            )
        )

    def init_upload(self) -> None:
        """Watch the upload dir when cameras push images (input cameras, or FTP on)."""
        settings = self.settings
        if not (settings.upload_cameras or settings.ftp_on):
            return
        self.add_worker(
            UploadStage(
                "upload",
                self.stop_event,
                root=settings.snapshots_root_dir,
                upload_dir=settings.upload_dir,
                cameras=settings.upload_cameras,
                outbox=self.after_snapshot,
                max_bytes=settings.upload_max_bytes,
                settle=settings.upload_settle_seconds,
                stable=settings.upload_stable_seconds,
                create_dirs=settings.ftp_create_dirs,
                on_fatal=self.daemon.on_fatal,
            )
        )

    def init_ftp(self) -> None:
        """The FTP server, only with a password: never anonymous."""
        settings = self.settings
        if not settings.ftp_on:
            return
        assert settings.ftp_pass is not None
        options = FtpOptions(
            root=settings.snapshots_root_dir,
            upload_dir=settings.upload_dir,
            user=settings.ftp_user,
            password=settings.ftp_pass.get_secret_value(),
            listen_address=settings.ftp_listen_address,
            port=settings.ftp_port,
            passive_ports=settings.ftp_passive_ports,
            masquerade_address=settings.ftp_masquerade_address,
            max_connections=settings.ftp_max_connections,
            max_connections_per_ip=settings.ftp_max_connections_per_ip,
            tls_cert=settings.ftp_tls_cert,
            tls_key=settings.ftp_tls_key,
            tls_required=settings.ftp_tls_required,
            ban_after=settings.ftp_ban_after,
            ban_seconds=settings.ftp_ban_seconds,
            login_delay=settings.ftp_login_delay,
        )
        self.add_worker(
            FtpServerThread("ftp", self.stop_event, options, on_fatal=self.daemon.on_fatal)
        )

    def init_snapshot(self) -> None:
        """Camera fetches, concurrent across cameras."""
        settings = self.settings
        registry = CameraRegistry(
            settings.cameras, timeout=settings.camera_timeout, retries=settings.camera_retries
        )
        self.cameras = registry
        self.add_worker(
            SnapshotStage(
                "snapshot",
                self.stop_event,
                cameras=registry,
                root=settings.snapshots_root_dir,
                inbox=SNAPSHOT_INBOX,
                outbox=self.after_snapshot,
                per_trigger=settings.snapshots_per_trigger,
                interval=settings.snapshot_interval,
                workers=settings.camera_workers,
                stop_timeout=settings.shutdown_timeout * 0.3,
                on_fatal=self.daemon.on_fatal,
            )
        )

    def decode_trigger(self, body: bytes, properties: pika.BasicProperties) -> Envelope:
        """A trigger body to the envelope the snapshot stage takes; bad ones are rejected."""
        try:
            trigger = parse_trigger(body, self.cameras.keys, self.settings.trigger_max_bytes)
        except TriggerError as exc:
            raise RejectedMessageError(exc.reason, str(exc)) from None
        return Envelope(TRIGGER_KIND, trigger.as_body())

    def init_listener(self) -> None:
        """The trigger consumer; started last, so everything downstream is ready."""
        settings = self.settings

        def setup(channel: BlockingChannel) -> str:
            return broker.declare_trigger_queue(channel, settings)

        self.add_worker(
            AmqpListener(
                "listener",
                self.stop_event,
                params=self.params("listener"),
                setup=setup,
                decode=self.decode_trigger,
                forward_to=SNAPSHOT_INBOX,
                ack_inbox=ACK_INBOX,
                prefetch=settings.rabbitmq_prefetch,
                drain_timeout=settings.shutdown_timeout * 0.3,
                on_fatal=self.daemon.on_fatal,
            )
        )

    def build(self) -> Daemon:
        """Register every start-up step in order."""
        self.init_metrics()
        self.init_health()
        self.init_publisher()
        self.init_events()
        self.init_detection()
        self.init_snapshot()
        self.init_upload()
        self.init_ftp()
        self.init_listener()
        return self.daemon
