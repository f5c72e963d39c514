"""``trigger CAMERA``: send a trigger as the event processor does, print its event and latency."""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime
from typing import Any

import msgpack
import pika
import pika.exceptions
import requests

from pylib.observe.logs import printable
from snapshot_processor.cli.common import (
    EXIT_CAMERA,
    EXIT_CONFIG,
    EXIT_NO_EVENT,
    CommandError,
    broker_channel,
    command_logging,
    find_camera,
    load_settings,
)
from snapshot_processor.cli.events import Subscription, describe_event
from snapshot_processor.cli.snap import add_device_params
from snapshot_processor.config import Device, Settings
from snapshot_processor.contract.event import trigger_routing_key
from snapshot_processor.contract.exchanges import control_exchange

HELP = "send a trigger for a camera as the event processor does and wait for its event"

# As the senders set it: a trigger nobody takes within a minute is worth nothing.
TRIGGER_EXPIRATION_MS = "60000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "camera", help="the camera output's key, e.g. 'Front Door camera' (any case)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the event (default %(default)s)",
    )
    add_device_params(parser)


def trigger_message(
    settings: Settings, device: Device, device_params: str | None
) -> dict[str, Any]:
    """The trigger map, with the fields the event processor sends."""
    return {
        "timestamp": int(time.time()),
        "active_input": {
            "device_key": "command line",
            "device_type": "cli",
            "device_label": "snapshot-processor trigger",
        },
        "output_triggered": {
            "device_key": device.key,
            "device_type": device.TYPE,
            "device_label": device.LOCATION,
            "device_params": device_params,
            "trigger_topic": settings.broker.device_topic,
            "trigger_interval": 0,
            "device_enabled": True,
        },
    }


def _addressed(device: Device) -> bool:
    return bool(device.ADDRESS) or (device.VENDOR == "generic" and bool(device.URL))


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    device = find_camera(settings, args.camera)
    if args.device_params is None and not _addressed(device):
        raise CommandError(
            f"camera '{printable(device.key)}' has no OUTPUT_n_ADDRESS, so its trigger must "
            "carry one: pass --device-params",
            EXIT_CONFIG,
        )
    body = msgpack.packb(trigger_message(settings, device, args.device_params), use_bin_type=True)
    wanted = device.key.strip().lower()
    with command_logging(), broker_channel(settings, "trigger") as channel:
        # Bound before the trigger goes out, so the event cannot slip past.
        subscription = Subscription(channel, settings, heartbeats=False)
        channel.confirm_delivery()
        sent = time.monotonic()
        # The API's times are whole seconds: a failure in the second of the trigger is its.
        sent_at = math.floor(time.time())
        try:
            channel.basic_publish(
                control_exchange(settings),
                trigger_routing_key(settings.broker.device_topic),
                body,
                pika.BasicProperties(expiration=TRIGGER_EXPIRATION_MS),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise CommandError(
                f"no trigger queue is bound to {printable(control_exchange(settings))} with "
                f"{trigger_routing_key(settings.broker.device_topic)}: no daemon is running "
                "on this exchange",
                EXIT_NO_EVENT,
            ) from None
        deadline = sent + args.timeout
        # A camera already down fails again within its attempts: told after them, not at the end.
        attempts = settings.camera.answer_within
        while (remaining := deadline - time.monotonic()) > 0:
            message = subscription.next(min(remaining, 0.5))
            if message is not None and _camera_of(message[1]) == wanted:
                latency = time.monotonic() - sent
                print(f"event after {latency * 1000:.0f} ms: {describe_event(*message)}")
                return 0
            waited = time.monotonic() - sent
            failure = _camera_failure(settings, wanted, sent_at if waited < attempts else 0.0)
            if failure is not None:
                raise CommandError(
                    f"camera '{printable(device.key)}' failed: {printable(failure)}", EXIT_CAMERA
                )
    failure = _camera_failure(settings, wanted, 0.0)
    why = f"the camera is down: {printable(failure)}" if failure else "the daemon's log says why"
    raise CommandError(
        f"no event from camera '{printable(device.key)}' within {args.timeout:g} s ({why})",
        EXIT_NO_EVENT,
    )


def _camera_failure(settings: Settings, key: str, after: float) -> str | None:
    """Why the daemon finds the camera down, if it went down at or after ``after`` (unix
    s), from the daemon's own HTTP API; None when it is not down or there is no API."""
    port, host = settings.ops.http_port, settings.ops.http_bind
    if not port:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/api/cameras"
    token = settings.ops.http_token_value
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with requests.Session() as session:
            session.trust_env = False  # the daemon is local: no proxy from the environment
            reply = session.get(url, headers=headers, timeout=2, allow_redirects=False)
        cameras = reply.json()["cameras"] if reply.status_code == 200 else []
        for camera in cameras:
            health = camera.get("health") or {}
            if str(camera.get("key", "")).strip().lower() != key or health.get("state") != "down":
                continue
            failed = health.get("last_failure") or health["since"]
            if datetime.fromisoformat(failed).timestamp() >= after:
                return str(health.get("last_error") or health.get("reason") or "down")
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
        return None  # no API to ask: the timeout's message says where to look
    return None


def _camera_of(body: bytes) -> str | None:
    """The lower-cased ``device_key`` of an image event, None if it has none."""
    try:
        message = msgpack.unpackb(body, raw=False)
        key = message["inputs"][0]["device_key"]
    except Exception:  # not an image event we can read: not ours
        return None
    return key.strip().lower() if isinstance(key, str) else None
