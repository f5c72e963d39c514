"""The trigger queue against the real broker and the whole running daemon: every delivery
is settled whatever its shape, a consumer the broker cancels comes back, the queue is
durable, and it can be a quorum queue."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest

from pylib.amqp.consumer import AmqpListener
from snapshot_processor.app import App
from snapshot_processor.contract.exchanges import trigger_queue_arguments
from tests.support.broker import (
    BROKER,
    Peer,
    delete_queue,
    running_app,
    trigger_body,
    unique_exchange,
)
from tests.support.daemon import PASSWORD, foscam_env, make_settings
from tests.support.metrics import sample
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def listener_of(app: App) -> AmqpListener:
    found = next(worker for worker in app.workers if worker.name == "listener")
    assert isinstance(found, AmqpListener)
    return found


def queue_state(name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of a queue, from a connection of its own; None if absent."""
    connection = pika.BlockingConnection(BROKER)
    try:
        ok = connection.channel().queue_declare(name, passive=True)
        return ok.method.message_count, ok.method.consumer_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return None
    finally:
        connection.close()


def good_trigger(camera: CameraSimulator, label: str = "good") -> dict[str, Any]:
    return trigger_body(
        "Front Door camera",
        device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}",
        label=label,
    )


def poison_triggers(closed_port: int) -> list[bytes]:
    """Twenty triggers that each fail somewhere: in parsing, or inside the chain."""

    def packed(value: Any) -> bytes:
        data: bytes = msgpack.packb(value, use_bin_type=True)
        return data

    def variant(**top: Any) -> bytes:
        body = trigger_body("Front Door camera", device_params=f"admin:x@127.0.0.1:{closed_port}")
        body.update(top)
        return packed(body)

    unknown = trigger_body("attic camera")
    no_camera_there = variant()  # parses, then the fetch is refused inside the chain
    bad_address = trigger_body("Front Door camera", device_params="admin:x@127.0.0.1:99999")
    shapes = [
        variant(active_input={1: 2}),  # a non-string map key, camera refuses
        packed([1, 2, 3]),  # msgpack that is not a map
        b"\xc1\x00\xff garbage \x93",  # not msgpack at all
        packed(unknown),  # a camera nobody configured
        variant(timestamp=1e300),  # out of any calendar: refused by the parser
        no_camera_there,
        packed(bad_address),  # parses, then the camera address is refused inside the chain
    ]
    return list(itertools.islice(itertools.cycle(shapes), 20))


def test_twenty_poison_triggers_then_a_good_one_all_settled(
    tmp_path: Path, camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, RABBITMQ_PREFETCH="8", **foscam_env())
    peer = Peer(exchange)
    with CameraSimulator(user="admin", password=PASSWORD) as gone:
        closed_port = gone.port  # nothing listens there once it is closed
    try:
        with running_app(settings) as app:
            listener = listener_of(app)
            refused = sample(
                "amqp_messages_rejected_total", queue=settings.queue_name, reason="bad_field"
            )
            for body in poison_triggers(closed_port):
                peer.send_raw(body)
            peer.send_trigger(good_trigger(camera))
            images = peer.wait_for_images(1, timeout=30)
            assert [entry["device_label"] for image in images for entry in image["inputs"]] == [
                "good"
            ]
            assert wait_until(lambda: listener.in_flight == 0)
            assert listener.is_alive()
            assert listener.consuming.is_set()
            assert queue_state(settings.queue_name) == (0, 1)
            assert (
                sample(
                    "amqp_messages_rejected_total", queue=settings.queue_name, reason="bad_field"
                )
                == refused + 3
            )
            # With the consumer gone, whatever it left unacked would be ready again.
            assert listener.stop_and_join(10)
            assert queue_state(settings.queue_name) == (0, 0)
    finally:
        peer.close()
    assert PASSWORD not in caplog.text


def test_deleted_trigger_queue_is_declared_again_and_consumed(
    tmp_path: Path, camera: CameraSimulator
) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            cancels = sample("amqp_consumer_cancels_total", queue=settings.queue_name)
            delete_queue(settings.queue_name)  # as an operator or a policy would
            assert wait_until(
                lambda: (
                    sample("amqp_consumer_cancels_total", queue=settings.queue_name) == cancels + 1
                )
            )
            # Declared again, bound and consumed by the daemon on its own.
            assert wait_until(lambda: queue_state(settings.queue_name) == (0, 1), timeout=15)
            peer.send_trigger(good_trigger(camera, label="after"))
            images = peer.wait_for_images(1)
            assert [entry["device_label"] for image in images for entry in image["inputs"]] == [
                "after"
            ]
            assert wait_until(lambda: app.health()[0])
    finally:
        peer.close()


def redeclare(name: str, *, durable: bool, arguments: dict[str, str | int] | None = None) -> int:
    """Declare ``name`` again from a connection of our own: 200 if the broker agrees with
    the settings, else the code it closed the channel with (406: other settings)."""
    connection = pika.BlockingConnection(BROKER)
    try:
        connection.channel().queue_declare(name, durable=durable, arguments=arguments)
        return 200
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        connection.close()


def test_trigger_queue_is_durable(tmp_path: Path) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    with running_app(settings):
        # The broker compares every declare with the queue's own settings.
        assert redeclare(settings.queue_name, durable=True) == 200
        assert redeclare(settings.queue_name, durable=False) == 406


def test_quorum_trigger_queue_end_to_end(tmp_path: Path, camera: CameraSimulator) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, RABBITMQ_QUEUE_TYPE="quorum", **foscam_env())
    peer = Peer(exchange)
    try:
        with running_app(settings):
            queue = settings.queue_name
            # A quorum queue, with its delivery limit and dead-letter queue.
            limited = trigger_queue_arguments(settings)
            assert limited is not None
            assert limited["x-queue-type"] == "quorum"
            assert redeclare(queue, durable=True, arguments=limited) == 200
            assert redeclare(queue, durable=True, arguments={"x-queue-type": "classic"}) == 406
            peer.send_trigger(good_trigger(camera, label="quorum"))
            images = peer.wait_for_images(1)
            assert [entry["device_label"] for image in images for entry in image["inputs"]] == [
                "quorum"
            ]
    finally:
        peer.close()


def test_queue_of_another_type_is_named_with_the_remedy_then_taken_once_deleted(
    tmp_path: Path, camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, RABBITMQ_QUEUE_TYPE="quorum", **foscam_env())
    queue = settings.queue_name
    assert redeclare(queue, durable=True) == 200  # a classic queue from an earlier version
    peer = Peer(exchange)
    app = App(settings)
    daemon = app.build()
    daemon.start()
    try:
        listener = listener_of(app)

        def named() -> bool:
            return any(
                "refused the queue set-up" in line and queue in line and "delete it" in line
                for line in listener.troubles()
            )

        assert wait_until(named)
        healthy, problems = app.health()
        assert not healthy
        assert "PRECONDITION_FAILED" in problems
        assert any(
            record.levelno == logging.ERROR
            and queue in record.getMessage()
            and "RABBITMQ_QUEUE_TYPE" in record.getMessage()
            for record in caplog.records
        )
        assert listener.is_alive()
        delete_queue(queue)  # the operator follows the remedy
        assert listener.consuming.wait(40)
        assert listener.troubles() == []
        assert redeclare(queue, durable=True, arguments=trigger_queue_arguments(settings)) == 200
        peer.send_trigger(good_trigger(camera, label="quorum"))
        assert len(peer.wait_for_images(1)) == 1
    finally:
        peer.close()
        stopped = daemon.stop()
        delete_queue(queue)
    assert stopped
