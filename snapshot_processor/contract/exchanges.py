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


def queue_type_arguments(settings: Settings) -> dict[str, str] | None:
    """A quorum queue says so; a classic one is declared with no arguments, as it always
    was, so queues made by earlier versions still match."""
    return {"x-queue-type": "quorum"} if settings.broker.queue_type == "quorum" else None


def dead_letter_queue(settings: Settings) -> str:
    """Where triggers go that were delivered TRIGGER_MAX_DELIVERIES times unsettled."""
    return f"{settings.queue_name}.dead"


def trigger_queue_arguments(settings: Settings) -> dict[str, str | int] | None:
    """A quorum queue counts deliveries: past the limit, a trigger is dead-lettered (through
    the default exchange, to :func:`dead_letter_queue`) instead of coming back forever.
    Classic queues cannot count them (RabbitMQ 3.10)."""
    if settings.broker.queue_type != "quorum":
        return None
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.broker.trigger_max_deliveries,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(settings),
    }


def declare_trigger_queue(channel: BlockingChannel, settings: Settings) -> str:
    """The durable trigger queue (triggers wait while the daemon is away), bound; its name."""
    declare_exchanges(channel, settings)
    queue = settings.queue_name
    try:
        if settings.broker.queue_type == "quorum":
            # First, so no trigger is dead-lettered to a queue that is not there yet.
            channel.queue_declare(
                dead_letter_queue(settings), durable=True, arguments=queue_type_arguments(settings)
            )
        channel.queue_declare(queue, durable=True, arguments=trigger_queue_arguments(settings))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        # Re-raised with the remedy: the broker's text names only the clashing argument.
        raise pika.exceptions.ChannelClosedByBroker(
            exc.reply_code,
            f"trigger queue {queue!r} exists with other settings than a durable "
            f"{_described(settings)} ({exc.reply_text}); delete it "
            f"(rabbitmqctl delete_queue {queue!r}, its waiting triggers go with it) or set "
            "RABBITMQ_QUEUE_TYPE / RABBITMQ_QUEUE to match",
        ) from None
    channel.queue_bind(
        queue, control_exchange(settings), trigger_routing_key(settings.broker.device_topic)
    )
    return queue


def _described(settings: Settings) -> str:
    broker = settings.broker
    if broker.queue_type == "quorum":
        return f"quorum queue with a delivery limit of {broker.trigger_max_deliveries}"
    return "classic queue"


def feedback_queue(settings: Settings) -> str:
    """This daemon's queue of verdicts: every daemon hears each, the one that has the event
    keeps it."""
    broker = settings.broker
    return f"{broker.exchange}.{broker.device_topic}.{settings.device_name}.feedback"


def declare_feedback_queue(channel: BlockingChannel, settings: Settings) -> str:
    """The durable queue of verdicts (they wait while the daemon is away), bound; its name."""
    declare_exchanges(channel, settings)
    queue = feedback_queue(settings)
    channel.queue_declare(queue, durable=True, arguments=queue_type_arguments(settings))
    channel.queue_bind(
        queue, control_exchange(settings), feedback_routing_key(settings.broker.device_topic)
    )
    return queue
