"""Assembles the daemon from its parts: a flat list of start-up steps, stopped in reverse."""

from __future__ import annotations

import logging
import threading

from prometheus_client import start_http_server

from pylib.daemon import Daemon
from pylib.health import HealthPinger
from pylib.worker import Worker
from snapshot_processor.config import Settings

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

    def health(self) -> tuple[bool, str]:
        """Healthy while every worker thread is alive and not given up on."""
        dead = [worker.name for worker in self.workers if not worker.healthy]
        if dead:
            return False, "dead threads: " + ", ".join(dead)
        return True, f"{len(self.workers)} threads running"

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

    def build(self) -> Daemon:
        """Register every start-up step in order."""
        self.init_metrics()
        self.init_health()
        return self.daemon
