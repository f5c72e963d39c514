"""Both exchanges are declared exactly as the existing services declare them, on the real
broker: not durable, not auto-delete, no arguments (ARCHITECTURE.md, "Exchange declarations").

RabbitMQ refuses a second declaration of an exchange with PRECONDITION_FAILED when its
type, durable, auto-delete, internal or alternate-exchange differ; it does not compare other
arguments, so those are read back from the broker itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from snapshot_processor import config
from snapshot_processor.config import Settings
from snapshot_processor.contract.exchanges import control_exchange, declare_exchanges
from tests.support.broker import BROKER, unique_exchange

pytestmark = pytest.mark.broker

# The Java event processor's exchangeDeclare(name, TOPIC) and (name, DIRECT): the Java
# client's defaults, as pika's exchange_declare defaults are the original's.
JAVA_DEFAULTS: dict[str, Any] = {
    "durable": False,
    "auto_delete": False,
    "internal": False,
    "arguments": None,
}


@pytest.fixture
def channel() -> Iterator[BlockingChannel]:
    connection = pika.BlockingConnection(BROKER)
    try:
        yield connection.channel()
    finally:
        connection.close()


def settings_for(exchange: str) -> Settings:
    return config.load(env={"RABBITMQ_EXCHANGE": exchange})


def declare_as_the_event_processor(channel: BlockingChannel, exchange: str) -> None:
    channel.exchange_declare(exchange, exchange_type="topic", **JAVA_DEFAULTS)
    channel.exchange_declare(f"{exchange}_control", exchange_type="direct", **JAVA_DEFAULTS)


def test_the_event_processor_declares_them_after_us(channel: BlockingChannel) -> None:
    exchange = unique_exchange()
    settings = settings_for(exchange)
    assert control_exchange(settings) == f"{exchange}_control"
    declare_exchanges(channel, settings)
    # Both are there, of their types ...
    channel.exchange_declare(exchange, exchange_type="topic", passive=True)
    channel.exchange_declare(f"{exchange}_control", exchange_type="direct", passive=True)
    # ... and a declaration with the Java client's defaults matches them (else the broker
    # closes the channel with PRECONDITION_FAILED and this raises).
    declare_as_the_event_processor(channel, exchange)
    assert channel.is_open


def test_we_declare_them_after_the_event_processor(channel: BlockingChannel) -> None:
    exchange = unique_exchange()
    declare_as_the_event_processor(channel, exchange)
    declare_exchanges(channel, settings_for(exchange))
    assert channel.is_open


def _declared(names: set[str]) -> dict[str, dict[str, Any]]:
    """Each named exchange's declaration as the broker holds it (``rabbitmqctl``)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.skip("rabbitmqctl is not installed")
    columns = ["name", "type", "durable", "auto_delete", "internal", "arguments"]
    done = subprocess.run(
        [rabbitmqctl, "-q", "--formatter", "json", "list_exchanges", *columns],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot list exchanges here: {done.stderr.strip()[:200]}")
    return {row["name"]: row for row in json.loads(done.stdout) if row["name"] in names}


def test_the_broker_holds_them_with_no_arguments(channel: BlockingChannel) -> None:
    exchange = unique_exchange()
    declare_exchanges(channel, settings_for(exchange))
    declared = _declared({exchange, f"{exchange}_control"})
    expected = {"durable": False, "auto_delete": False, "internal": False, "arguments": []}
    assert declared == {
        exchange: {"name": exchange, "type": "topic", **expected},
        f"{exchange}_control": {"name": f"{exchange}_control", "type": "direct", **expected},
    }
