"""Ingest as the daemon runs it: the watched folder's stage, and the FTP server that fills it."""

from __future__ import annotations

from dataclasses import dataclass

from pylib.runtime.daemon import Daemon
from snapshot_processor.config import Settings
from snapshot_processor.ingest.ftp import FtpOptions, FtpServerThread
from snapshot_processor.ingest.stage import DiskBounds, IngestStage, camera_folder


@dataclass(frozen=True)
class Ingest:
    """The stage (when cameras push at all) and the FTP server (when it is on)."""

    stage: IngestStage | None
    ftp: FtpServerThread | None


def build(settings: Settings, daemon: Daemon) -> Ingest:
    section = settings.ingest
    stage = None
    if settings.upload_cameras or section.ftp_on:
        stage = IngestStage(
            "ingest",
            daemon.stop_event,
            root=settings.snapshots_root_dir,
            upload_dir=settings.ingest_dir,
            cameras=settings.upload_cameras,
            max_bytes=section.max_bytes,
            settle=section.settle_seconds,
            stable=section.stable_seconds,
            create_dirs=section.create_dirs,
            bounds=DiskBounds(
                stray_max_age=section.stray_max_age,
                stray_max_bytes=section.stray_max_bytes,
                quarantine_max_bytes=section.quarantine_max_bytes,
            ),
            requeue=section.REQUEUE,
            on_fatal=daemon.on_fatal,
        )
    ftp = None
    if section.ftp_on:  # only with a password: never anonymous
        assert section.ftp_pass is not None
        options = FtpOptions(
            root=settings.snapshots_root_dir,
            upload_dir=settings.ingest_dir,
            user=section.ftp_user,
            password=section.ftp_pass.get_secret_value(),
            listen_address=section.ftp_listen_address,
            port=section.ftp_port,
            passive_ports=section.ftp_passive_ports,
            masquerade_address=section.ftp_masquerade_address,
            max_connections=section.ftp_max_connections,
            max_connections_per_ip=section.ftp_max_connections_per_ip,
            tls_cert=section.ftp_tls_cert,
            tls_key=section.ftp_tls_key,
            tls_required=section.ftp_tls_required,
            ban_after=section.ftp_ban_after,
            ban_seconds=section.ftp_ban_seconds,
            login_delay=section.ftp_login_delay,
            reserved_for_sessions=section.ftp_reserved_sessions,
            login_timeout=section.ftp_login_timeout,
            max_failed_logins_per_minute=section.ftp_max_failed_logins_per_minute,
            camera_folders=tuple(
                (device.key, camera_folder(device.LOCATION)) for device in settings.upload_cameras
            ),
        )
        ftp = FtpServerThread("ftp", daemon.stop_event, options, on_fatal=daemon.on_fatal)
    return Ingest(stage, ftp)
