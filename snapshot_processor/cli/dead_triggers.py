"""``dead-triggers``: the triggers a quorum trigger queue gave up on, listed; ``--replay``
sends them back to the control exchange, each acked from the dead-letter queue only once
the broker has confirmed its copy."""

from __future__ import annotations

import argparse

import pika

from snapshot_processor.cli.common import (
    EXIT_CONFIG,
    CommandError,
    broker_channel,
    command_logging,
    load_settings,
)
from snapshot_processor.contract import dead_letters, exchanges

HELP = (
    "list the triggers dead-lettered after TRIGGER_MAX_DELIVERIES deliveries (quorum trigger "
    "queue); --replay sends them back"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replay", action="store_true", help="publish them again as they were first sent"
    )
    parser.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", EXIT_CONFIG)
    settings = load_settings(args.config)
    if settings.broker.queue_type != "quorum":
        raise CommandError(
            "a classic trigger queue has no delivery limit and no dead-letter queue; "
            "set RABBITMQ_QUEUE_TYPE=quorum",
            EXIT_CONFIG,
        )
    queue = exchanges.dead_letter_queue(settings)
    with command_logging(), broker_channel(settings, "dead-triggers") as channel:
        # Declared as the daemon does, so the command works before the daemon first ran.
        exchanges.declare_trigger_queue(channel, settings)
        channel.confirm_delivery()
        found = list(dead_letters.fetch(channel, settings, args.limit))
        for dead in found:
            print(dead.summary(), flush=True)
            if args.replay:
                channel.basic_publish(
                    dead.exchange,
                    dead.routing_key,
                    dead.body,
                    pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                )
                channel.basic_ack(dead.tag)
        verb = "sent back" if args.replay else "in"
        print(f"{len(found)} dead trigger(s) {verb} {queue}", flush=True)
    return 0
