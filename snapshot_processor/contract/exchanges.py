"""The RabbitMQ topology shared with the existing services, declared exactly as they do."""

from __future__ import annotations

import pika
from pika.adapters.blocking_connection import BlockingChannel

from snapshot_processor.config import Settings
from snapshot_processor.contract.event import trigger_routing_key
from snapshot_processor.contract.feedback import feedback_routing_key

# A queue or exchange exists with other arguments.
PRECONDITION_FAILED = 406


def control_exchange(settings: Settings) -> str:
    """Where triggers arrive: ``<exchange>_control``."""
    return f"{settings.broker.exchange}_control"


def declare_exchanges(channel: BlockingChannel, settings: Settings) -> None:
    """Both exchanges with the clients' defaults (not durable, no arguments): other
    arguments would fail with PRECONDITION_FAILED where the other services made them."""
    channel.exchange_declare(settings.broker.exchange, exchange_type="topic")
    channel.exchange_declare(control_exchange(settings), exchange_type="direct")


def trigger_queue_arguments(settings: Settings) -> dict[str, str] | None:
    """A quorum queue says so; a classic one is declared with no arguments, as it always
    was, so queues made by earlier versions still match."""
    return {"x-queue-type": "quorum"} if settings.broker.queue_type == "quorum" else None


def declare_trigger_queue(channel: BlockingChannel, settings: Settings) -> str:
    """The durable trigger queue (triggers wait while the daemon is away), bound; its name."""
    declare_exchanges(channel, settings)
    queue = settings.queue_name
    try:
        channel.queue_declare(queue, durable=True, arguments=trigger_queue_arguments(settings))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        # Re-raised with the remedy: the broker's text names only the clashing argument.
        raise pika.exceptions.ChannelClosedByBroker(
            exc.reply_code,
            f"trigger queue {queue!r} exists with other settings than a durable "
            f"{settings.broker.queue_type} queue ({exc.reply_text}); delete it "
            f"(rabbitmqctl delete_queue {queue!r}, its waiting triggers go with it) or set "
            "RABBITMQ_QUEUE_TYPE / RABBITMQ_QUEUE to match",
        ) from None
    channel.queue_bind(
        queue, control_exchange(settings), trigger_routing_key(settings.broker.device_topic)
    )
    return queue


def feedback_queue(settings: Settings) -> str:
    """This daemon's queue of verdicts: every daemon hears each, the one that has the event
    keeps it."""
    broker = settings.broker
    return f"{broker.exchange}.{broker.device_topic}.{settings.device_name}.feedback"


def declare_feedback_queue(channel: BlockingChannel, settings: Settings) -> str:
    """The durable queue of verdicts (they wait while the daemon is away), bound; its name."""
    declare_exchanges(channel, settings)
    queue = feedback_queue(settings)
    channel.queue_declare(queue, durable=True, arguments=trigger_queue_arguments(settings))
    channel.queue_bind(
        queue, control_exchange(settings), feedback_routing_key(settings.broker.device_topic)
    )
    return queue
