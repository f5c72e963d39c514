"""The RabbitMQ topology shared with the existing services, declared exactly as they do."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def queue_type_arguments(settings: Settings) -> dict[str, str | int] | None:
    """A quorum queue says so; a classic one is declared with no arguments, as it always
    was, so queues made by earlier versions still match."""
    return {"x-queue-type": "quorum"} if settings.broker.queue_type == "quorum" else None


def dead_letter_queue(settings: Settings) -> str:
    """Where triggers go that were delivered TRIGGER_MAX_DELIVERIES times unsettled."""
    return f"{settings.queue_name}.dead"


# Dead letters kept at most (the oldest go first): a bound, since nothing else empties it.
DEAD_LETTER_MAX = 10_000


def trigger_queue_arguments(settings: Settings) -> dict[str, str | int] | None:
    """A quorum queue counts deliveries: past the limit, a trigger is dead-lettered
    instead of coming back forever. Classic queues cannot count them (RabbitMQ 3.10)."""
    if settings.broker.queue_type != "quorum":
        return None
    return {
        "x-queue-type": "quorum",
        # The limit counts redeliveries: N deliveries in all is a limit of N - 1.
        "x-delivery-limit": settings.broker.trigger_max_deliveries - 1,
        # Through the default exchange, straight to the dead-letter queue. Expired triggers
        # (senders give them 60 s) go there too, and the listener drops them.
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(settings),
    }


@dataclass(frozen=True)
class TriggerQueue:
    """The declared trigger queue; ``unlimited`` says why its delivery limit is not in
    force (a quorum queue made earlier without it, or with another), else None."""

    name: str
    unlimited: str | None = None


def declare_trigger_queue(channel: BlockingChannel, settings: Settings) -> TriggerQueue:
    """The durable trigger queue (triggers wait while the daemon is away), bound; with a
    quorum queue, its dead-letter queue too."""
    declare_exchanges(channel, settings)
    queue = settings.queue_name
    unlimited = None
    if settings.broker.queue_type == "quorum":
        # First, so no trigger is dead-lettered where nothing takes it yet.
        channel.queue_declare(
            dead_letter_queue(settings),
            durable=True,
            arguments={"x-queue-type": "quorum", "x-max-length": DEAD_LETTER_MAX},
        )
        unlimited = _declare_quorum(channel, settings)
    else:
        _declare(channel, settings, trigger_queue_arguments(settings))
    channel.queue_bind(
        queue, control_exchange(settings), trigger_routing_key(settings.broker.device_topic)
    )
    return TriggerQueue(queue, unlimited)


def _declare_quorum(channel: BlockingChannel, settings: Settings) -> str | None:
    """The quorum queue with its limit, on channels of its own (a refusal closes the
    channel): one made earlier without it is taken as it is, with the remedy, while one of
    another type is refused. The broker names only the first argument that differs, and
    for a classic queue that is the dead-letter exchange, hence the second try."""
    queue = settings.queue_name
    try:
        _on_a_channel_of_its_own(channel, settings, trigger_queue_arguments(settings))
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        first = exc.reply_text
    try:
        _on_a_channel_of_its_own(channel, settings, queue_type_arguments(settings))
        made = "without a delivery limit (by an earlier version)"
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED or "x-queue-type" in exc.reply_text:
            raise _refused(settings, exc) from None
        made = "with another delivery limit or dead-letter exchange"
    limit = settings.broker.trigger_max_deliveries
    return (
        f"the trigger queue {queue} was made {made} ({first}): TRIGGER_MAX_DELIVERIES "
        f"({limit}) is not in force, and a trigger that fails on every delivery may come back "
        f"forever. Delete the queue while no trigger waits in it (rabbitmqctl delete_queue "
        f"'{queue}') and the daemon makes it anew, or apply the limit as a policy: "
        f"rabbitmqctl set_policy trigger-limit '^{re.escape(queue)}$' "
        f'\'{{"delivery-limit": {limit - 1}, "dead-letter-exchange": "", '
        f'"dead-letter-routing-key": "{dead_letter_queue(settings)}"}}\' '
        "--apply-to quorum_queues"
    )


def _on_a_channel_of_its_own(
    channel: BlockingChannel, settings: Settings, arguments: dict[str, str | int] | None
) -> None:
    """A declaration that may be refused, which closes its channel: not ``channel``'s."""
    own = channel.connection.channel()
    try:
        own.queue_declare(settings.queue_name, durable=True, arguments=arguments)
    finally:
        if own.is_open:
            own.close()


def _declare(
    channel: BlockingChannel, settings: Settings, arguments: dict[str, str | int] | None
) -> None:
    try:
        channel.queue_declare(settings.queue_name, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        raise _refused(settings, exc) from None


def _refused(
    settings: Settings, exc: pika.exceptions.ChannelClosedByBroker
) -> pika.exceptions.ChannelClosedByBroker:
    """The refusal with the remedy: the broker's text names only the clashing argument."""
    queue = settings.queue_name
    return pika.exceptions.ChannelClosedByBroker(
        exc.reply_code,
        f"trigger queue {queue!r} exists with other settings than a durable "
        f"{_described(settings)} ({exc.reply_text}); delete it "
        f"(rabbitmqctl delete_queue {queue!r}, its waiting triggers go with it) or set "
        "RABBITMQ_QUEUE_TYPE / RABBITMQ_QUEUE to match",
    )


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
