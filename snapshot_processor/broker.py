"""The RabbitMQ topology shared with the existing services, declared exactly as they do."""

from __future__ import annotations

from pika.adapters.blocking_connection import BlockingChannel

from snapshot_processor.config import Settings
from snapshot_processor.event import trigger_routing_key


def control_exchange(settings: Settings) -> str:
    """Where triggers arrive: ``<exchange>_control``."""
    return f"{settings.rabbitmq_exchange}_control"


def declare_exchanges(channel: BlockingChannel, settings: Settings) -> None:
    """Both exchanges with the clients' defaults (not durable, no arguments): other
    arguments would fail with PRECONDITION_FAILED where the other services made them."""
    channel.exchange_declare(settings.rabbitmq_exchange, exchange_type="topic")
    channel.exchange_declare(control_exchange(settings), exchange_type="direct")


def declare_trigger_queue(channel: BlockingChannel, settings: Settings) -> str:
    """The durable, shared trigger queue bound to the control exchange; returns its name."""
    declare_exchanges(channel, settings)
    queue = settings.queue_name
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(
        queue, control_exchange(settings), trigger_routing_key(settings.rabbitmq_device_topic)
    )
    return queue
