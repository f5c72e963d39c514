"""The broker's side of the chain: triggers in (the listener), image events built and
published with heartbeats (the events relay and the publisher)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pika

from pylib.amqp.consumer import AmqpListener, RejectedMessageError
from pylib.amqp.params import broker_parameters
from pylib.amqp.publisher import AmqpPublisher
from pylib.chain.envelope import Envelope
from pylib.chain.settle import Publication
from pylib.chain.stage import Relay, Stage
from pylib.runtime.daemon import Daemon
from pylib.runtime.worker import Worker
from snapshot_processor.config import Settings
from snapshot_processor.contract import dead_letters, event, exchanges
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.contract.publication import EventBuilder
from snapshot_processor.contract.trigger import TriggerError, parse_trigger
from snapshot_processor.ops.recent import RecentEvents


def params(settings: Settings, role: str) -> list[pika.ConnectionParameters]:
    """Connection parameters for one of our connections, named for the broker's UI: one
    per node of RABBITMQ_URL, tried in order."""
    url = settings.broker.url.get_secret_value() if settings.broker.url else None
    return broker_parameters(
        url,
        settings.broker.server_address,
        connection_name=f"{settings.app_name} {settings.device_name} {role}",
    )


def heartbeat(
    settings: Settings, camera_health: Callable[[], Mapping[str, dict[str, Any]]]
) -> Callable[[], Publication]:
    """The periodic heartbeat listing our inputs and outputs (and each camera's health)."""
    return lambda: Publication(
        settings.broker.exchange,
        event.heartbeat_routing_key(settings.broker.device_topic),
        event.pack(
            event.heartbeat(
                settings.inputs.values(),
                settings.outputs.values(),
                camera_health=camera_health(),
            )
        ),
    )


def events(
    settings: Settings,
    daemon: Daemon,
    recent: RecentEvents,
    observers: Sequence[Callable[[SnapshotMessage], None]] = (),
) -> Stage:
    """Snapshots (with detections) become image events, and are recorded for the page and
    shown to the ``observers`` (Home Assistant's output)."""
    builder = EventBuilder(
        settings.broker.exchange,
        settings.broker.device_topic,
        settings.device_name,
        recent=recent,
        observers=observers,
    )
    return Relay("events", daemon.stop_event, builder, fold=True, on_fatal=daemon.on_fatal)


def publisher(settings: Settings, daemon: Daemon, periodic: Callable[[], Publication]) -> Stage:
    """The publisher: outbox, confirms, heartbeats, acks back up the chain."""
    return AmqpPublisher(
        "publisher",
        daemon.stop_event,
        params=params(settings, "publisher"),
        setup=lambda channel: exchanges.declare_exchanges(channel, settings),
        outbox_path=settings.outbox_path,
        outbox_max=settings.broker.outbox_max_events,
        periodic=periodic,
        periodic_interval=settings.broker.heartbeat_interval,
        retry=settings.broker.RECONNECT,
        nack_retry=settings.broker.NACK_RETRY,
        store_retry=settings.broker.OUTBOX_RETRY,
        on_fatal=daemon.on_fatal,
    )


def listener(
    settings: Settings, daemon: Daemon, camera_keys: Mapping[str, str], forward_to: str
) -> Worker:
    """The trigger consumer, feeding the snapshot stage; bad triggers are rejected."""

    def decode(body: bytes, properties: pika.BasicProperties) -> Envelope:
        try:
            trigger = parse_trigger(body, camera_keys, settings.broker.trigger_max_bytes)
        except TriggerError as exc:
            raise RejectedMessageError(exc.reason, str(exc)) from None
        return trigger.message().envelope()

    queue = dead_letters.TriggerQueueWatch(settings)
    return AmqpListener(
        "listener",
        daemon.stop_event,
        params=params(settings, "listener"),
        setup=queue.declare,
        decode=decode,
        forward_to=forward_to,
        prefetch=settings.prefetch,
        retry=settings.broker.RECONNECT,
        requeue=settings.broker.REQUEUE,
        on_fatal=daemon.on_fatal,
        watch=queue.watch if settings.broker.queue_type == "quorum" else None,
    )
