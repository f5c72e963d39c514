"""``events``: print each image event as it arrives, as a companion service sees it."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from pylib.observe.logs import printable
from snapshot_processor.cli.common import (
    EXIT_CONFIG,
    EXIT_NO_EVENT,
    CommandError,
    broker_channel,
    command_logging,
    load_settings,
)
from snapshot_processor.config import Settings
from snapshot_processor.contract.event import heartbeat_routing_key

HELP = "print each image event as it arrives on the event exchange"

# How often the wait for messages looks at Ctrl-C and the clock.
TICK_SECONDS = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=None, help="stop after this many events")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop after this many seconds (with --count: exit 7 if fewer came)",
    )
    parser.add_argument(
        "--heartbeats", action="store_true", help="print the daemons' heartbeats too"
    )


def image_key_pattern(settings: Settings) -> str:
    """The binding for every daemon's image events on this topic."""
    return f"event.notify.{settings.broker.device_topic}.*.image"


def _detections(entry: dict[str, Any]) -> str:
    found = entry.get("detections")
    if not isinstance(found, list) or not found:
        return "analysed, none" if entry.get("analysed") else "none"
    parts = []
    for item in found:
        if isinstance(item, dict):
            confidence = item.get("confidence")
            share = f" {confidence:.0f}%" if isinstance(confidence, int | float) else ""
            parts.append(f"{printable(item.get('label'))}{share}")
    return ", ".join(parts)


def describe_event(routing_key: str, body: bytes) -> str:
    """One line for a message on the event exchange, or what is wrong with it."""
    try:
        message = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several kinds for bad input
        return f"{printable(routing_key)}: not msgpack ({type(exc).__name__}, {len(body)} bytes)"
    if not isinstance(message, dict):
        return f"{printable(routing_key)}: not a map ({type(message).__name__})"
    inputs = message.get("inputs")
    if routing_key.startswith("event.heartbeat."):
        outputs = message.get("outputs")
        count = len(inputs) if isinstance(inputs, list) else 0
        return (
            f"{printable(routing_key)} heartbeat at {printable(message.get('timestamp'))}: "
            f"{count} input(s), {len(outputs) if isinstance(outputs, list) else 0} output(s)"
        )
    entry = inputs[0] if isinstance(inputs, list) and inputs else None
    if not isinstance(entry, dict):
        return f"{printable(routing_key)}: no inputs in the event"
    image = entry.get("image")
    size = len(image) if isinstance(image, bytes) else 0
    detail = entry.get("event_detail")
    return (
        f"{printable(routing_key)} camera '{printable(entry.get('device_key'))}' "
        f"{size} bytes, detections: {_detections(entry)}"
        + (f" ({printable(detail)})" if detail else "")
        + f", storage_url: {printable(entry.get('storage_url') or '-')}"
        + f", storage_path: {printable(entry.get('storage_path') or '-')}"
        + f", event {printable(message.get('event_id') or entry.get('event_id') or '-')}"
    )


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while inside (on the main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {
        signum: signal.signal(signum, lambda signum, frame: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Subscription:
    """Our own queue on the event exchange, bound before anything is awaited."""

    def __init__(self, channel: BlockingChannel, settings: Settings, *, heartbeats: bool) -> None:
        self.channel = channel
        self._arrived: deque[tuple[str, bytes]] = deque()
        queue: str = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        exchange = settings.broker.exchange
        channel.queue_bind(queue, exchange, image_key_pattern(settings))
        if heartbeats:
            channel.queue_bind(queue, exchange, heartbeat_routing_key(settings.broker.device_topic))
        # auto_ack: the queue is ours alone and dies with the connection.
        channel.basic_consume(queue, self._on_message, auto_ack=True)

    def _on_message(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        self._arrived.append((method.routing_key, body))

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next message (routing key, body), waiting at most ``timeout`` seconds."""
        if not self._arrived:
            self.channel.connection.process_data_events(time_limit=timeout)
        return self._arrived.popleft() if self._arrived else None


def run(args: argparse.Namespace) -> int:
    """Subscribe and print until ``--count`` events, ``--timeout``, or Ctrl-C."""
    if args.count is not None and args.count < 1:
        raise CommandError("--count must be at least 1", EXIT_CONFIG)
    settings = load_settings(args.config)
    printed = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with (
        command_logging(),
        stop_on_signals() as stop,
        broker_channel(settings, "events") as channel,
    ):
        subscription = Subscription(channel, settings, heartbeats=args.heartbeats)
        print(
            f"listening on {printable(settings.broker.exchange)} for "
            f"{image_key_pattern(settings)} (Ctrl-C ends)",
            flush=True,
        )
        while not stop.is_set() and (args.count is None or printed < args.count):
            if deadline is not None and time.monotonic() >= deadline:
                break
            message = subscription.next(TICK_SECONDS)
            if message is not None:
                print(describe_event(*message), flush=True)
                printed += 1
    if args.count is not None and printed < args.count and not stop.is_set():
        raise CommandError(
            f"{printed} of {args.count} event(s) within {args.timeout:g} s", EXIT_NO_EVENT
        )
    return 0
