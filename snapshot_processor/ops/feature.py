"""Operations as the daemon runs them: recent events, HTTP and metrics servers, health pings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pylib.http import HttpServer, TokenAuth
from pylib.runtime.daemon import Daemon, StartError
from pylib.runtime.pings import HealthPinger
from pylib.runtime.worker import Worker, WorkerStartError
from snapshot_processor.bundle.listing import ParkedReasons, bundle_views
from snapshot_processor.bundle.seal import Sealer
from snapshot_processor.camera.feature import Cameras
from snapshot_processor.camera.requests import SnapshotRequests
from snapshot_processor.config import Settings
from snapshot_processor.ops.recent import RecentEvents
from snapshot_processor.ops.routes import Camera, HealthReport, Ops, build_router, metrics_router


def recent_events(settings: Settings, daemon: Daemon) -> RecentEvents:
    """The recent events the status page and the API show (closed after the chain)."""
    path = settings.recent_events_path
    try:
        recent = RecentEvents(path, keep=settings.ops.recent_events)
    except (OSError, sqlite3.Error) as exc:
        raise StartError(f"recent events {path} cannot be opened: {exc}") from None

    def close(timeout: float) -> bool:
        recent.close()
        return True

    daemon.add_step("recent events", lambda: None, close)
    return recent


def metrics_listener(settings: Settings, daemon: Daemon) -> None:
    """Prometheus counters on METRICS_PORT too, when set: HTTP_PORT's rules, only ``/metrics``."""
    port, address = settings.ops.metrics_port, settings.ops.metrics_address
    if not port:
        return
    server = HttpServer(
        "metrics",
        daemon.stop_event,
        address=address,
        port=port,
        router=metrics_router(),
        auth=TokenAuth(settings.ops.http_token_value),
        allowed_hosts=settings.ops.http_allowed_hosts,
    )

    def start() -> None:
        try:
            server.start()
        except WorkerStartError as exc:
            server.stop_and_join(5)
            raise StartError(str(exc)) from None

    daemon.add_step("metrics", start, server.stop_and_join)


def health_pings(
    settings: Settings, daemon: Daemon, health: Callable[[], tuple[bool, str]]
) -> None:
    """Ping healthchecks / Cronitor on a schedule, when configured."""
    section = settings.ops
    hc_url = section.hc_ping_url.get_secret_value() if section.hc_ping_url else None
    cronitor = (
        section.cronitor_monitor_key.get_secret_value() if section.cronitor_monitor_key else None
    )
    if not (hc_url or cronitor):
        return
    pinger = HealthPinger(
        hc_url, cronitor, is_healthy=health, interval=section.health_ping_interval
    )
    daemon.add_step("health", pinger.start, pinger.stop)


def bundle_listing(
    sealer: Sealer, parked: ParkedReasons | None
) -> Callable[[int], list[dict[str, Any]]]:
    """The newest bundles of the sealer's store as ``/api/bundles`` and the page show them;
    raises BundleStoreError when the bundle file cannot be read. ``parked`` must not raise."""

    def newest(limit: int) -> list[dict[str, Any]]:
        return bundle_views(sealer.store.recent(limit), sealer.destinations, parked, sealer.root)

    return newest


def http_server(
    settings: Settings,
    daemon: Daemon,
    *,
    cameras: Cameras,
    recent: RecentEvents,
    report: Callable[[], HealthReport],
    snapshot_inbox: str,
    parked_uploads: Callable[[Collection[str]], Mapping[str, str]] | None = None,
    bundles: Callable[[int], list[dict[str, Any]]] | None = None,
    feedback: Callable[[str, str], str] | None = None,
) -> Worker | None:
    """The HTTP server: health, metrics, the API and the status page (HTTP_PORT 0: off)."""
    section = settings.ops
    if not section.http_port:
        return None
    requests = SnapshotRequests(
        snapshot_inbox, {d.key: d.LOCATION for d in settings.cameras}, cameras.registry
    )

    ops = Ops(
        cameras=[
            *(Camera(d.key, d.LOCATION, d.VENDOR) for d in settings.cameras),
            *(Camera(d.key, d.LOCATION, "ftp", source="ftp") for d in settings.upload_cameras),
        ],
        health=report,
        recent=recent,
        camera_health=cameras.prober.status,
        take_snapshot=requests.take,
        parked_uploads=parked_uploads,
        snapshots_root=settings.snapshots_root_dir,
        snapshot_seconds=settings.camera.answer_within,
        bundles=bundles,
        feedback=feedback,
    )
    auth = TokenAuth(section.http_token_value)
    return HttpServer(
        "http",
        daemon.stop_event,
        address=section.http_bind,
        port=section.http_port,
        router=build_router(ops, auth),
        auth=auth,
        allowed_hosts=section.http_allowed_hosts,
        realm=settings.app_name,
        on_close=requests.close,
        on_fatal=daemon.on_fatal,
    )
