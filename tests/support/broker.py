"""Test-side RabbitMQ peers: a trigger sender and an event subscriber, as the other services are."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgpack
import pika
from pika.adapters.blocking_connection import BlockingChannel

from snapshot_processor.app import App
from snapshot_processor.config import Settings
from snapshot_processor.contract.exchanges import dead_letter_queue
from tests.support.wait import wait_until

BROKER = pika.ConnectionParameters("127.0.0.1", 5672, heartbeat=30)


# Every exchange name handed out, so the session can remove them at its end.
NAMED: list[str] = []


def unique_exchange() -> str:
    """An exchange name no other test uses, so tests never see each other's messages."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    NAMED.append(name)
    return name


def delete_named_exchanges() -> None:
    """Remove the exchanges (and their ``_control`` twins) the tests were given names
    for, so runs do not pile them up on the broker; nothing to do without a broker."""
    if not NAMED:
        return
    try:
        connection = pika.BlockingConnection(BROKER)
    except pika.exceptions.AMQPConnectionError:
        return
    try:
        channel = connection.channel()
        for name in NAMED:
            for each in (name, f"{name}_control"):
                channel.exchange_delete(each)
        NAMED.clear()
    finally:
        connection.close()


def trigger_body(
    device_key: str,
    *,
    timestamp: int | None = None,
    device_params: str | None = "admin:secret@127.0.0.1:88",
    label: str = "Front Door",
) -> dict[str, Any]:
    """A trigger as the existing event processor sends it."""
    return {
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "active_input": {"device_key": "hall pir", "device_type": "pir", "device_label": "hall"},
        "output_triggered": {
            "device_key": device_key,
            "device_type": "camera",
            "device_label": label,
            "device_params": device_params,
            "trigger_topic": "snapshot",
            "trigger_interval": 10,
            "device_enabled": True,
        },
    }


class Peer:
    """One connection from the test: sends triggers, subscribes to events with '#'."""

    def __init__(self, exchange: str, topic: str = "snapshot") -> None:
        self.exchange = exchange
        self.topic = topic
        self.connection = pika.BlockingConnection(BROKER)
        self.channel: BlockingChannel = self.connection.channel()
        # Declared as the existing services do: client defaults, not durable.
        self.channel.exchange_declare(exchange, exchange_type="topic")
        self.channel.exchange_declare(f"{exchange}_control", exchange_type="direct")
        result = self.channel.queue_declare("", exclusive=True)
        self.queue = result.method.queue
        self.channel.queue_bind(self.queue, exchange, "#")
        self.messages: list[tuple[str, pika.BasicProperties, dict[str, Any]]] = []
        self.channel.basic_consume(self.queue, self._on_message, auto_ack=True)

    def _on_message(
        self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        self.messages.append((method.routing_key, properties, msgpack.unpackb(body, raw=False)))

    def send_raw(self, body: bytes, *, expiration: str | None = "60000") -> None:
        """Publish raw bytes as a trigger."""
        self.channel.basic_publish(
            f"{self.exchange}_control",
            f"event.trigger.{self.topic}",
            body,
            pika.BasicProperties(expiration=expiration),
        )

    def send_trigger(self, body: Mapping[str, Any]) -> None:
        """Publish a trigger map, msgpack-encoded, with the usual 60 s expiration."""
        self.send_raw(msgpack.packb(dict(body), use_bin_type=True))

    def images(self) -> list[dict[str, Any]]:
        """Image events received so far."""
        return [body for key, _, body in self.messages if key.endswith(".image")]

    def bundles(self) -> list[dict[str, Any]]:
        """Bundle events received so far."""
        return [body for key, _, body in self.messages if key.endswith(".bundle")]

    def pump_until(
        self, condition: Callable[[], object], timeout: float = 30.0, each: float = 0.1
    ) -> bool:
        """Receive, ``each`` s at a time, until ``condition()`` holds: False if it does not
        within ``timeout`` s. The condition sees what arrived; nothing arrives unless pumped."""

        def pumped() -> bool:
            if condition():
                return True
            self.connection.process_data_events(time_limit=each)
            return bool(condition())

        return wait_until(pumped, timeout, step=0)

    def wait_for_images(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Pump the connection until ``count`` image events arrived or the time is up."""
        self.pump_until(lambda: len(self.images()) >= count, timeout)
        return self.images()

    def pump(self, seconds: float) -> None:
        """Receive whatever arrives for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=0.1)

    def close(self) -> None:
        """Close the connection (the exclusive queue goes with it)."""
        if self.connection.is_open:
            self.connection.close()


def delete_queue(name: str) -> None:
    """Remove a durable queue a test's daemon declared."""
    connection = pika.BlockingConnection(BROKER)
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


@contextmanager
def running_app(settings: Settings) -> Iterator[App]:
    """The daemon's whole chain, in this process, stopped in reverse order at the end."""
    app = App(settings)
    daemon = app.build()
    daemon.start()
    try:
        # The queue exists once the listener consumes; a trigger sent before would be unroutable.
        for worker in app.workers:
            ready = getattr(worker, "consuming", None) or getattr(worker, "connected", None)
            if ready is not None:
                assert ready.wait(15), f"{worker.name} did not reach the broker"
        yield app
    finally:
        stopped = daemon.stop()
        delete_queue(settings.queue_name)
        if settings.broker.queue_type == "quorum":
            delete_queue(dead_letter_queue(settings))
        assert stopped, "the daemon did not stop within its bound"
