"""Pipelined publisher confirms against the real broker: a group sent, its confirms awaited once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from pylib.amqp_confirms import ConfirmedChannel, Outgoing
from tests.support.broker import BROKER, unique_exchange

pytestmark = pytest.mark.broker

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


@pytest.fixture
def connection() -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(BROKER)
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def queue_for(channel: BlockingChannel, exchange: str, **arguments: object) -> str:
    channel.exchange_declare(exchange, exchange_type="topic")
    name = f"{exchange}.{uuid.uuid4().hex[:6]}"
    channel.queue_declare(name, durable=True, arguments=arguments or None)
    channel.queue_bind(name, exchange, "#")
    return name


def outgoing(exchange: str, n: int) -> Outgoing:
    return exchange, "event.notify.test", f"message {n}".encode(), PERSISTENT


def bodies(channel: BlockingChannel, queue: str) -> list[bytes]:
    found: list[bytes] = []
    while True:
        method, _properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return found
        found.append(body)


def test_a_group_is_confirmed_in_order_and_every_message_arrives(
    connection: pika.BlockingConnection,
) -> None:
    exchange = unique_exchange()
    setup = connection.channel()
    queue = queue_for(setup, exchange)
    try:
        confirmed = ConfirmedChannel(connection.channel())
        assert confirmed.publish([outgoing(exchange, n) for n in range(20)]) == [True] * 20
        assert confirmed.publish([outgoing(exchange, 20)]) == [True]  # tags go on counting
        assert bodies(setup, queue) == [f"message {n}".encode() for n in range(21)]
    finally:
        setup.queue_delete(queue)
        setup.exchange_delete(exchange)


def test_a_queue_that_refuses_makes_every_message_of_the_group_a_nack(
    connection: pika.BlockingConnection,
) -> None:
    exchange = unique_exchange()
    setup = connection.channel()
    queue = queue_for(setup, exchange, **{"x-max-length": 0, "x-overflow": "reject-publish"})
    try:
        confirmed = ConfirmedChannel(connection.channel())
        assert confirmed.publish([outgoing(exchange, n) for n in range(3)]) == [False] * 3
    finally:
        setup.queue_delete(queue)
        setup.exchange_delete(exchange)


def test_a_channel_the_broker_closes_mid_group_says_how_many_were_confirmed(
    connection: pika.BlockingConnection,
) -> None:
    exchange = unique_exchange()
    setup = connection.channel()
    queue = queue_for(setup, exchange)
    try:
        confirmed = ConfirmedChannel(connection.channel())
        assert confirmed.publish([outgoing(exchange, 0)]) == [True]
        group = [outgoing(exchange, 1), outgoing(unique_exchange(), 2), outgoing(exchange, 3)]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
            confirmed.publish(group)
        assert raised.value.reply_code == 404
        # The first may or may not have had its confirm before the close; never the rest.
        assert confirmed.confirmed_before_close(len(group)) in (0, 1)
        assert b"message 3" not in bodies(setup, queue)
    finally:
        setup.queue_delete(queue)
        setup.exchange_delete(exchange)
