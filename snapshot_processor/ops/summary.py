"""What this daemon will do, said in a few lines at start."""

from __future__ import annotations

from pylib.observe.logs import printable
from snapshot_processor.config import Device, Settings


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
    if backend != "none" and settings.detection.remote:
        detection = (
            f"by detect-worker processes (DETECTION_REMOTE), at most "
            f"{settings.detection.remote_timeout:g} s a frame"
        )
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
        f"Home Assistant over MQTT: {_mqtt(settings)}",
    ]


def _mqtt(settings: Settings) -> str:
    section = settings.mqtt
    if not section.on:
        return "off (no MQTT_URL)"
    who = f"{printable(section.user)}@" if section.user else ""
    scheme = "mqtts" if section.tls else "mqtt"
    return (
        f"{scheme}://{who}{section.broker}, discovery under {section.discovery_prefix}/, "
        f"states under {section.topic_prefix}/"
    )


def no_camera_hint(settings: Settings) -> str | None:
    """On a configuration with no camera at all, the one line that says where to start."""
    if settings.cameras or settings.upload_cameras:
        return None
    return (
        "no camera is configured, so no trigger has anything to fetch: add a camera output "
        "(OUTPUT_1_LOCATION, OUTPUT_1_TYPE=camera, OUTPUT_1_VENDOR, OUTPUT_1_ADDRESS and the "
        "OUTPUT_1_PASSWORD secret) or a camera that pushes by FTP (INPUT_1_LOCATION, "
        'INPUT_1_TYPE=camera and FTP_PASS); see the README\'s "Your first camera"'
    )
