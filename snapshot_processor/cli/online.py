"""``check-config --online``: reach every configured outside system and say what works."""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pika
import requests

from pylib.amqp.params import CONNECTION_ERRORS, close_quietly, describe, explain
from pylib.observe.logs import printable
from pylib.observe.redact import redact
from snapshot_processor.camera.errors import CameraAuthError, CameraError
from snapshot_processor.camera.registry import CameraConfigError, CameraRegistry
from snapshot_processor.cli.common import broker_params, camera_registry
from snapshot_processor.config import Device, Settings
from snapshot_processor.mqtt.feature import broker_of
from snapshot_processor.mqtt.link import MqttRefusedError, try_connection
from snapshot_processor.storage.destinations import DESTINATIONS

# A system's name, the call that reaches it, and the settings to look at when it fails.
Check = tuple[str, Callable[[], str], Callable[[BaseException], str]]


def checks(settings: Settings) -> Iterator[Check]:
    """Each configured outside system, named, with a call that reaches it: what it found,
    or an exception saying why not."""
    # Each node of a cluster on its own: the daemon moves on from one that is down, and a
    # user should hear which.
    for node in broker_params(settings, "check"):
        yield (
            f"broker {describe(node)}",
            functools.partial(_broker, settings, node),
            lambda exc: (
                "RABBITMQ_URL's user and password"
                if isinstance(exc, pika.exceptions.ProbableAuthenticationError)
                else "RABBITMQ_SERVER_ADDRESS (or RABBITMQ_URL)"
            ),
        )
    registry = camera_registry(settings)
    try:  # each check runs before the next is asked for: closed once the cameras' are done
        for number, device in sorted(settings.outputs.items()):
            if device.is_camera:
                name = f"camera '{printable(device.key)}'"
                yield (
                    name,
                    functools.partial(_camera, registry, device.key),
                    _camera_fix(number, device),
                )
    finally:
        registry.close()
    storage = settings.storage
    if storage.s3_bucket:
        yield (
            f"S3 bucket {storage.s3_bucket}",
            lambda: _cloud(settings, "s3"),
            lambda exc: "S3_BUCKET, AWS_DEFAULT_REGION and the AWS credentials",
        )
    if storage.drive_on:
        drive = f"Google Drive folder {storage.google_drive_folder!r}"
        yield (
            drive,
            lambda: _cloud(settings, "drive"),
            lambda exc: "GOOGLE_DRIVE_FOLDER and GOOGLE_DRIVE_CREDENTIALS",
        )
    if settings.mqtt.on:
        yield (
            f"MQTT broker {settings.mqtt.broker}",
            lambda: try_connection(broker_of(settings)),
            lambda exc: (
                "MQTT_URL's user and MQTT_PASSWORD"
                if isinstance(exc, MqttRefusedError)
                else "MQTT_URL (and MQTT_CA_FILE for mqtts://)"
            ),
        )
    if settings.secrets.op_connect_host:
        yield (
            "1Password Connect",
            lambda: "secrets read (the configuration loaded with them)",
            lambda exc: "OP_CONNECT_HOST, OP_CONNECT_TOKEN and OP_VAULT",
        )
    if settings.sentry_dsn:
        dsn = settings.sentry_dsn.get_secret_value()
        yield "Sentry", lambda: _reachable(dsn), lambda exc: "SENTRY_DSN"


def run_checks(settings: Settings) -> int:
    """Print one line per system; the number that failed."""
    failed = 0
    for name, check, fix in checks(settings):
        started = time.monotonic()
        try:
            found = check()
        except Exception as exc:  # each system fails its own way: said, and the next goes on
            failed += 1
            print(f"  {name}: FAILED: {redact(_why(exc))}; check {fix(exc)}")
            continue
        print(f"  {name}: ok, {redact(found)} ({time.monotonic() - started:.2f} s)")
    return failed


def _camera_fix(number: int, device: Device) -> Callable[[BaseException], str]:
    def fix(exc: BaseException) -> str:
        if isinstance(exc, CameraAuthError):
            return f"OUTPUT_{number}_USER and OUTPUT_{number}_PASSWORD"
        if device.VENDOR == "rtsp":
            return f"OUTPUT_{number}_URL"
        if device.RTSP_MODE not in (None, "off"):
            return f"OUTPUT_{number}_ADDRESS and OUTPUT_{number}_RTSP_MODE"
        return f"OUTPUT_{number}_ADDRESS and OUTPUT_{number}_VENDOR"

    return fix


def _why(exc: BaseException) -> str:
    if isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, CameraError):
        return explain(exc)
    return str(exc) or type(exc).__name__


def _broker(settings: Settings, node: pika.ConnectionParameters) -> str:
    connection = pika.BlockingConnection(node)
    try:
        channel = connection.channel()
        try:
            channel.exchange_declare(settings.broker.exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            return f"logged in; exchange {settings.broker.exchange!r} is made at the first start"
        return f"logged in; exchange {settings.broker.exchange!r} is there"
    finally:
        close_quietly(connection)


def _camera(registry: CameraRegistry, key: str) -> str:
    try:
        registry.spec(key, None)
    except CameraConfigError:
        return "its address comes with each trigger: `snap --device-params` tries one"
    image = registry.snapshot(key, None)
    return f"a snapshot of {len(image)} bytes"


def _cloud(settings: Settings, name: str) -> str:
    # boto3 and pydrive2 are imported only where their destination is on.
    module = importlib.import_module(DESTINATIONS[name][1])
    destination = module.from_settings(settings.storage, settings.detection.aws_region)
    try:
        return str(destination.check())
    finally:
        destination.close()


def _reachable(url: str) -> str:
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2]  # host and port, never the key
    reply = requests.head(f"{parts.scheme}://{where}/", timeout=5)
    return f"{where} answers (HTTP {reply.status_code})"
