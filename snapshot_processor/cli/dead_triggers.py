"""``dead-triggers``: the triggers a quorum trigger queue gave up on, listed; ``--replay``
sends them back to the control exchange, each acked from the dead-letter queue only once
the broker has confirmed its copy."""

from __future__ import annotations

import argparse

import pika

from snapshot_processor.cli.common import (
    EXIT_BROKER,
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
    dead = exchanges.dead_letter_queue(settings)
    with command_logging(), broker_channel(settings, "dead-triggers") as channel:
        # Declared as the daemon does, so the command works before the daemon first ran.
        queue = exchanges.declare_trigger_queue(channel, settings).name
        channel.confirm_delivery()
        found = list(dead_letters.fetch(channel, settings, args.limit))
        replayed = 0
        for trigger in found:
            print(trigger.summary(), flush=True)
            if not args.replay:
                continue
            # Straight to this queue (through the default exchange): through the control
            # exchange it would also reach every other daemon's queue bound to its key.
            try:
                channel.basic_publish(
                    "", queue, trigger.body, dead_letters.replay_properties(trigger), mandatory=True
                )
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                raise CommandError(
                    f"the broker did not take a replayed trigger ({type(exc).__name__}); "
                    f"{replayed} sent back, the rest stay in {dead}",
                    EXIT_BROKER,
                ) from None
            channel.basic_ack(trigger.tag)
            replayed += 1
        left = channel.queue_declare(dead, passive=True).method.message_count
        if args.replay:
            print(f"{replayed} dead trigger(s) sent back to {queue}; {left} left in {dead}")
        else:
            print(f"{len(found)} dead trigger(s) listed; {left} more in {dead}", flush=True)
    return 0
