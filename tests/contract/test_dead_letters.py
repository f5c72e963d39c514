"""A quorum trigger queue gives up on a trigger delivered TRIGGER_MAX_DELIVERIES times
unsettled: it goes to the dead-letter queue, the daemon counts it and says so, and
``dead-triggers`` lists it and sends it back. On the real broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from prometheus_client import REGISTRY

from snapshot_processor import cli
from snapshot_processor.config import Settings
from snapshot_processor.contract import event, exchanges
from snapshot_processor.contract.dead_letters import TriggerQueueWatch
from snapshot_processor.contract.event import trigger_routing_key
from tests.cli.test_commands import write_config
from tests.support.broker import BROKER, delete_queue, running_app, trigger_body, unique_exchange
from tests.support.daemon import foscam_env, make_settings

pytestmark = pytest.mark.broker

LIMIT = 2


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    made = make_settings(
        tmp_path,
        unique_exchange(),
        RABBITMQ_QUEUE_TYPE="quorum",
        TRIGGER_MAX_DELIVERIES=str(LIMIT),
        **foscam_env(),
    )
    yield made
    delete_queue(exchanges.dead_letter_queue(made))
    delete_queue(made.queue_name)


def depth(queue: str) -> int:
    connection = pika.BlockingConnection(BROKER)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def kill_one_trigger(settings: Settings) -> bytes:
    """A trigger that a consumer hands back on every delivery, until the broker gives up."""
    body = event.pack(trigger_body("Front Door camera"))
    connection = pika.BlockingConnection(BROKER)
    try:
        channel = connection.channel()
        queue = exchanges.declare_trigger_queue(channel, settings).name
        channel.basic_publish(
            exchanges.control_exchange(settings),
            trigger_routing_key(settings.broker.device_topic),
            body,
        )
        handed_back = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and depth(exchanges.dead_letter_queue(settings)) == 0:
            method, _, _ = channel.basic_get(queue, auto_ack=False)
            if method is not None:
                channel.basic_nack(method.delivery_tag, requeue=True)
                handed_back += 1
            else:
                connection.process_data_events(0.05)
        # Delivered LIMIT times in all, handed back each time.
        assert handed_back == LIMIT
        assert depth(queue) == 0
    finally:
        connection.close()
    return body


def test_a_trigger_that_always_fails_ends_in_the_dead_letter_queue_and_the_daemon_says_so(
    settings: Settings,
) -> None:
    kill_one_trigger(settings)
    assert depth(exchanges.dead_letter_queue(settings)) == 1
    with running_app(settings) as app:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not app.report().warnings:
            time.sleep(0.1)
        warnings = app.report().warnings
        assert any(
            "1 trigger(s) in the dead-letter queue" in line and "dead-triggers" in line
            for line in warnings
        ), warnings
        assert REGISTRY.get_sample_value("trigger_dead_letters") == 1.0
        # Dead letters are no fault of the daemon's: it stays healthy.
        assert app.report().ok


def test_dead_triggers_lists_them_and_replay_sends_them_back(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = kill_one_trigger(settings)
    config_file = write_config(
        tmp_path,
        RABBITMQ_EXCHANGE=settings.broker.exchange,
        RABBITMQ_QUEUE_TYPE="quorum",
        TRIGGER_MAX_DELIVERIES=str(LIMIT),
    )
    dead = exchanges.dead_letter_queue(settings)

    assert cli.main(["--config", str(config_file), "dead-triggers"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2, listed
    assert "delivery_limit" in listed[0]
    control = exchanges.control_exchange(settings)
    assert f"{control}/{trigger_routing_key('snapshot')}" in listed[0]
    assert "camera 'Front Door camera' from 'hall pir'" in listed[0]
    assert "secret" not in listed[0]  # the camera's device_params are never shown
    assert listed[1] == f"1 dead trigger(s) listed; 0 more in {dead}"
    assert depth(dead) == 1  # looking takes nothing away

    # Another daemon's queue bound to the same key: a replay must not reach it.
    other = f"{settings.queue_name}.other-daemon"
    connection = pika.BlockingConnection(BROKER)
    try:
        channel = connection.channel()
        channel.queue_declare(other, durable=True)
        channel.queue_bind(other, control, trigger_routing_key("snapshot"))
    finally:
        connection.close()
    try:
        assert cli.main(["--config", str(config_file), "dead-triggers", "--replay"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"1 dead trigger(s) sent back to {settings.queue_name}; 0 left in {dead}"
        )
        assert depth(other) == 0
    finally:
        delete_queue(other)
    assert depth(dead) == 0
    connection = pika.BlockingConnection(BROKER)
    try:
        method, properties, again = connection.channel().basic_get(
            settings.queue_name, auto_ack=True
        )
    finally:
        connection.close()
    assert method is not None
    assert again == body
    assert properties.expiration is None  # it would only expire again
    assert "x-death" not in (properties.headers or {})


def test_an_expired_trigger_is_dropped_not_dead_lettered(settings: Settings) -> None:
    connection = pika.BlockingConnection(BROKER)
    try:
        channel = connection.channel()
        queue = exchanges.declare_trigger_queue(channel, settings).name
        channel.basic_publish(
            exchanges.control_exchange(settings),
            trigger_routing_key(settings.broker.device_topic),
            event.pack(trigger_body("Front Door camera")),
            pika.BasicProperties(expiration="100"),  # senders give 60 s
        )
    finally:
        connection.close()
    dead = exchanges.dead_letter_queue(settings)
    deadline = time.monotonic() + 10
    while not depth(dead) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The broker dead-letters it as it would one over the limit; the listener's watch
    # drops it, counted, and says nothing is dead.
    assert depth(queue) == 0
    expired = REGISTRY.get_sample_value("triggers_expired_total") or 0.0
    connection = pika.BlockingConnection(BROKER)
    try:
        assert TriggerQueueWatch(settings).watch(connection.channel()) == []
    finally:
        connection.close()
    assert depth(dead) == 0
    assert REGISTRY.get_sample_value("triggers_expired_total") == expired + 1


def test_a_quorum_queue_made_without_a_limit_is_consumed_with_the_remedy(
    settings: Settings,
) -> None:
    connection = pika.BlockingConnection(BROKER)
    try:  # as the previous version made it
        connection.channel().queue_declare(
            settings.queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
    finally:
        connection.close()
    with running_app(settings) as app:  # it consumes: running_app waits for that
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not app.report().warnings:
            time.sleep(0.1)
        (warning,) = app.report().warnings
    assert "without a delivery limit" in warning
    assert "TRIGGER_MAX_DELIVERIES (2) is not in force" in warning
    assert "rabbitmqctl set_policy" in warning
    assert '"delivery-limit": 1' in warning


def test_a_dead_letter_queue_deleted_by_hand_leaves_the_listener_connected(
    settings: Settings,
) -> None:
    watch = TriggerQueueWatch(settings)
    connection = pika.BlockingConnection(BROKER)
    try:
        channel = connection.channel()
        watch.declare(channel)
        assert watch.watch(channel) == []
        delete_queue(exchanges.dead_letter_queue(settings))
        (warning,) = watch.watch(channel)
        assert "cannot be read" in warning
        assert channel.is_open  # the consumer's channel is not the one refused
    finally:
        connection.close()


def test_a_classic_trigger_queue_has_no_dead_letters_to_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_config(tmp_path, RABBITMQ_EXCHANGE=unique_exchange())
    assert cli.main(["--config", str(config_file), "dead-triggers"]) == 2
    assert "RABBITMQ_QUEUE_TYPE=quorum" in capsys.readouterr().err
