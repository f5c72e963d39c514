"""The listener with a real publisher over the real broker: acks find their way back by
``reply_to``, a handed-back delivery is requeued only after a pause, a listener that
crashed and restarted still gets the acks of what it forwards, and acks that come
together go out together without ever covering a delivery still under way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from pylib.amqp.consumer import AmqpListener
from pylib.amqp.publisher import AmqpPublisher
from pylib.chain.envelope import Envelope
from pylib.chain.settle import Publication, Replies, Settlement, publish_envelope
from pylib.chain.sockets import bind_pull, receive
from pylib.retry import RetryPolicy
from pylib.runtime.worker import RestartBudget
from tests.pylib.test_amqp_publisher import address, declare, proxied
from tests.support.broker import BROKER, Peer, delete_queue, trigger_body, unique_exchange
from tests.support.metrics import sample
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker

QUICK = RetryPolicy(first=0.1, maximum=0.5)


class Chain:
    """Listener -> publisher, nothing between: each trigger becomes one image event."""

    def __init__(self, peer: Peer, tmp_path: Path) -> None:
        self.peer = peer
        self.tmp_path = tmp_path
        self.queue = f"{peer.exchange}.triggers"
        self.workers: list[AmqpPublisher | AmqpListener] = []

    def setup(self, channel: BlockingChannel) -> str:
        channel.exchange_declare(f"{self.peer.exchange}_control", exchange_type="direct")
        channel.queue_declare(self.queue, durable=True)
        channel.queue_bind(self.queue, f"{self.peer.exchange}_control", "event.trigger.snapshot")
        return self.queue

    def decode(self, body: bytes, properties: pika.BasicProperties) -> Envelope:
        label = msgpack.unpackb(body)["output_triggered"]["device_label"]
        event = msgpack.packb({"name": label})
        publication = Publication(self.peer.exchange, "event.notify.snapshot.test.image", event)
        return publish_envelope(publication, Settlement(None))

    def start(
        self,
        *,
        listener_params: pika.ConnectionParameters = BROKER,
        publisher_params: pika.ConnectionParameters = BROKER,
        setup: Callable[[BlockingChannel], str] | None = None,
        **listener_options: object,
    ) -> tuple[AmqpListener, AmqpPublisher]:
        inbox = address("publish")
        publisher = AmqpPublisher(
            "chain-publisher",
            threading.Event(),
            params=publisher_params,
            setup=declare(self.peer.exchange),
            outbox_path=self.tmp_path / "outbox.sqlite3",
            inbox=inbox,
            ack_to=None,  # acks find the listener by their reply_to alone
            outbox_max=1,
            retry=QUICK,
        )
        listener = AmqpListener(
            "chain-listener",
            threading.Event(),
            params=listener_params,
            setup=setup or self.setup,
            decode=self.decode,
            forward_to=inbox,
            ack_inbox=address("acks"),
            **{"retry": QUICK, **listener_options},  # type: ignore[arg-type]
        )
        for worker in (publisher, listener):
            worker.start()
            self.workers.append(worker)
        assert listener.consuming.wait(10)
        return listener, publisher

    def stop(self) -> None:
        for worker in reversed(self.workers):
            assert worker.stop_and_join(15)
        delete_queue(self.queue)

    def names(self) -> list[str]:
        return [image["name"] for image in self.peer.images()]

    def wait_for(self, wanted: set[str], timeout: float = 20.0) -> set[str]:
        self.peer.pump_until(lambda: wanted <= set(self.names()), timeout)
        return set(self.names())


@pytest.fixture
def peer() -> Iterator[Peer]:
    subscriber = Peer(unique_exchange())
    try:
        yield subscriber
    finally:
        subscriber.close()


@pytest.fixture
def chain(peer: Peer, tmp_path: Path) -> Iterator[Chain]:
    running = Chain(peer, tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5672) as running:
        yield running


def test_handed_back_delivery_is_requeued_after_a_pause_and_not_lost(
    chain: Chain, peer: Peer, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.cut()  # the publisher cannot reach the broker: its outbox (one message) fills
    listener, _ = chain.start(
        publisher_params=proxied(proxy), requeue=RetryPolicy(first=1.0, factor=1.0, maximum=1.0)
    )
    received = sample("amqp_messages_received_total", queue=chain.queue)
    peer.send_trigger(trigger_body("front door camera", label="first"))
    peer.send_trigger(trigger_body("front door camera", label="second"))
    with caplog.at_level(logging.INFO, logger="pylib.amqp.consumer"):
        peer.pump(2.5)
    # "first" is stored; "second" goes down the chain again about once a second, not in a
    # tight loop, and never back to the broker (a quorum queue would count each return).
    again = [r for r in caplog.records if "given to the chain again" in r.getMessage()]
    assert 1 <= len(again) <= 4
    assert sample("amqp_messages_received_total", queue=chain.queue) - received == 2
    assert listener.in_flight == 1  # "second", waiting out its pause
    proxy.restore()
    assert chain.wait_for({"first", "second"}) >= {"first", "second"}
    assert wait_until(lambda: listener.in_flight == 0)


def test_listener_restarted_after_a_crash_still_gets_its_acks(
    chain: Chain, peer: Peer, proxy: TcpProxy
) -> None:
    broken = threading.Event()

    def setup(channel: BlockingChannel) -> str:
        if broken.is_set():
            broken.clear()
            raise RuntimeError("queue setup failed")
        return chain.setup(channel)

    crashes = sample("thread_crashes_total", thread="chain-listener")
    listener, _ = chain.start(
        listener_params=proxied(proxy),
        setup=setup,
        budget=RestartBudget(restarts=3, window=60, delay=0.05),
    )
    peer.send_trigger(trigger_body("front door camera", label="before"))
    assert "before" in chain.wait_for({"before"})
    assert wait_until(lambda: listener.in_flight == 0)
    # The connection drops; on the way back the setup fails once and the thread restarts.
    broken.set()
    proxy.cut()
    assert wait_until(lambda: not listener.consuming.is_set())
    proxy.restore()
    assert wait_until(lambda: sample("thread_crashes_total", thread="chain-listener") > crashes)
    assert listener.consuming.wait(10)
    peer.send_trigger(trigger_body("front door camera", label="after"))
    assert "after" in chain.wait_for({"after"})
    # The publisher's ack reached the restarted listener, which acked the delivery.
    assert wait_until(lambda: listener.in_flight == 0)
    assert sample("thread_crashes_total", thread="chain-listener") == crashes + 1


def test_consumer_cancelled_by_the_broker_is_named_in_health_then_consumes_again(
    chain: Chain, peer: Peer
) -> None:
    # A long first pause, so the trouble can be seen before the queue is declared again.
    listener, _ = chain.start(retry=RetryPolicy(first=2.0, maximum=2.0))
    cancels = sample("amqp_consumer_cancels_total", queue=chain.queue)
    reconnects = sample("amqp_reconnects_total", role="consumer")
    assert listener.troubles() == []
    delete_queue(chain.queue)  # the broker sends basic.cancel to its consumer
    assert wait_until(lambda: listener.troubles())
    (trouble,) = listener.troubles()
    assert "cancelled the consumer" in trouble
    assert chain.queue in trouble
    assert sample("amqp_consumer_cancels_total", queue=chain.queue) == cancels + 1
    # Declared again by the same connection, with nothing lost on the way.
    assert wait_until(lambda: listener.troubles() == [], timeout=10)
    assert listener.consuming.is_set()
    peer.send_trigger(trigger_body("front door camera", label="after"))
    assert "after" in chain.wait_for({"after"})
    assert wait_until(lambda: listener.in_flight == 0)
    assert sample("amqp_reconnects_total", role="consumer") == reconnects


def test_delivery_the_chain_cannot_carry_is_acked_and_the_next_flows(
    chain: Chain, peer: Peer
) -> None:
    """A decoded message with a value msgpack cannot pack (past 64 bits) is rejected and
    acked by the listener, instead of crashing it on every redelivery."""
    plain = chain.decode

    def decode(body: bytes, properties: pika.BasicProperties) -> Envelope:
        envelope = plain(body, properties)
        if msgpack.unpackb(body)["output_triggered"]["device_label"] == "huge":
            return Envelope(envelope.kind, {**envelope.body, "size": 2**70}, envelope.id)
        return envelope

    chain.decode = decode  # type: ignore[method-assign]
    listener, _ = chain.start()
    before = sample("amqp_messages_rejected_total", queue=chain.queue, reason="unsendable")
    peer.send_trigger(trigger_body("cam", label="huge"))
    peer.send_trigger(trigger_body("cam", label="after"))
    assert "after" in chain.wait_for({"after"})
    assert "huge" not in chain.names()
    assert sample("amqp_messages_rejected_total", queue=chain.queue, reason="unsendable") == (
        before + 1
    )
    assert wait_until(lambda: listener.in_flight == 0)
    assert listener.is_alive()
    assert listener.consuming.is_set()


# One basic.ack on the wire: frame header (7), method (13: class, method, tag, flags), end (1).
ACK_FRAME = 21


def settled_bytes(proxy: TcpProxy) -> int:
    """What the clients sent, once nothing more has come for a moment."""
    seen = -1
    while seen != proxy.client_bytes:
        seen = proxy.client_bytes
        time.sleep(0.3)
    return seen


def test_acks_done_together_go_out_together_and_never_cover_a_delivery_under_way(
    chain: Chain, peer: Peer, proxy: TcpProxy
) -> None:
    inbox = address("forwarded")
    pull = bind_pull(inbox)
    replies = Replies()
    listener = AmqpListener(
        "chain-listener",
        threading.Event(),
        params=proxied(proxy),
        setup=chain.setup,
        decode=chain.decode,
        forward_to=inbox,
        ack_inbox=address("acks"),
        retry=QUICK,
        stop_timeout=0.5,
        prefetch=32,
    )
    try:
        listener.start()
        chain.workers.append(listener)
        assert listener.consuming.wait(10)
        labels = [f"t{n}" for n in range(17)]
        for label in labels:
            peer.send_trigger(trigger_body("front door camera", label=label))
        settlements: dict[str, Settlement] = {}
        while len(settlements) < len(labels):
            assert pull.poll(10_000), f"only {len(settlements)} deliveries forwarded"
            envelope = Envelope.unpack(receive(pull))
            name = msgpack.unpackb(envelope.body["body"])["name"]
            settlements[name] = Settlement.of(envelope.body)
        before = settled_bytes(proxy)
        # Every delivery done at once but t8, which is still under way.
        for label in labels:
            if label != "t8":
                assert replies.send(settlements[label])
        assert wait_until(lambda: listener.in_flight == 1)
        sent = settled_bytes(proxy) - before
        # One by one, that was 16 frames. Now t0-t7 go as one (multiple), and t9-t16,
        # newer than t8, one by one: 9 frames, a few more if the acks came in more rounds.
        assert sent % ACK_FRAME == 0
        assert 9 * ACK_FRAME <= sent <= 12 * ACK_FRAME
        assert listener.stop_and_join(15)
    finally:
        replies.close()
        pull.close(linger=0)
    # Only t8 was left unacked: the broker has it again, and nothing else.
    connection = pika.BlockingConnection(BROKER)
    try:
        channel = connection.channel()
        assert channel.queue_declare(chain.queue, passive=True).method.message_count == 1
        _, _, body = channel.basic_get(chain.queue, auto_ack=True)
        assert body is not None
        assert msgpack.unpackb(body)["output_triggered"]["device_label"] == "t8"
    finally:
        connection.close()
