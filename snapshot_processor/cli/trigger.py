"""``trigger CAMERA``: publish a trigger exactly as the event processor does, wait for the
image event it causes, and print it with the latency."""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgpack
import pika
import pika.exceptions

from pylib.observe.logs import printable
from snapshot_processor.cli.common import (
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
    """``CAMERA``, ``--timeout`` and ``--device-params``."""
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
    """Subscribe, publish the trigger, wait for the camera's image event."""
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
        while (remaining := deadline - time.monotonic()) > 0:
            message = subscription.next(min(remaining, 0.5))
            if message is None or _camera_of(message[1]) != wanted:
                continue
            latency = time.monotonic() - sent
            print(f"event after {latency * 1000:.0f} ms: {describe_event(*message)}")
            return 0
    raise CommandError(
        f"no event from camera '{printable(device.key)}' within {args.timeout:g} s "
        "(the daemon's log says why)",
        EXIT_NO_EVENT,
    )


def _camera_of(body: bytes) -> str | None:
    """The lower-cased ``device_key`` of an image event, None if it has none."""
    try:
        message = msgpack.unpackb(body, raw=False)
        key = message["inputs"][0]["device_key"]
    except Exception:  # not an image event we can read: not ours
        return None
    return key.strip().lower() if isinstance(key, str) else None
