"""Pipelined publisher confirms against the real broker: a group sent, its confirms awaited once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest

from pylib.amqp.confirms import ConfirmedChannel, Outgoing
from tests.support.broker import BROKER, unique_exchange

pytestmark = pytest.mark.broker

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


class Bench:
    """A connection, a channel that sets up and inspects, one exchange and its queues."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.setup = connection.channel()
        self.exchange = unique_exchange()
        self.setup.exchange_declare(self.exchange, exchange_type="topic")
        self.queues: list[str] = []

    def queue(self, **arguments: object) -> str:
        name = f"{self.exchange}.{uuid.uuid4().hex[:6]}"
        self.setup.queue_declare(name, durable=True, arguments=arguments or None)
        self.setup.queue_bind(name, self.exchange, "#")
        self.queues.append(name)
        return name

    def confirmed(self) -> ConfirmedChannel:
        return ConfirmedChannel(self.connection.channel())

    def outgoing(self, n: int, exchange: str | None = None) -> Outgoing:
        return exchange or self.exchange, "event.notify.test", f"message {n}".encode(), PERSISTENT

    def bodies(self, queue: str) -> list[bytes]:
        found: list[bytes] = []
        while True:
            method, _properties, body = self.setup.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append(body)

    def close(self) -> None:
        for queue in self.queues:
            self.setup.queue_delete(queue)
        self.setup.exchange_delete(self.exchange)


@pytest.fixture
def bench() -> Iterator[Bench]:
    connection = pika.BlockingConnection(BROKER)
    made = Bench(connection)
    try:
        yield made
    finally:
        made.close()
        connection.close()


def test_a_group_is_confirmed_in_order_and_every_message_arrives(bench: Bench) -> None:
    queue = bench.queue()
    confirmed = bench.confirmed()
    assert confirmed.publish([bench.outgoing(n) for n in range(20)]) == [True] * 20
    assert confirmed.publish([bench.outgoing(20)]) == [True]  # tags go on counting
    assert bench.bodies(queue) == [f"message {n}".encode() for n in range(21)]


def test_a_queue_that_refuses_makes_every_message_of_the_group_a_nack(bench: Bench) -> None:
    bench.queue(**{"x-max-length": 0, "x-overflow": "reject-publish"})
    confirmed = bench.confirmed()
    assert confirmed.publish([bench.outgoing(n) for n in range(3)]) == [False] * 3


def test_a_channel_the_broker_closes_mid_group_says_how_many_were_confirmed(
    bench: Bench,
) -> None:
    queue = bench.queue()
    confirmed = bench.confirmed()
    assert confirmed.publish([bench.outgoing(0)]) == [True]
    group = [bench.outgoing(1), bench.outgoing(2, unique_exchange()), bench.outgoing(3)]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
        confirmed.publish(group)
    assert raised.value.reply_code == 404
    # The first may or may not have had its confirm before the close; never the rest.
    assert confirmed.confirmed_before_close(len(group)) in (0, 1)
    assert b"message 3" not in bench.bodies(queue)
