"""The publisher over the real broker: where acks go, a full or failing outbox, broker nacks,
a crash and restart, and the bounded last flush at stop."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
import zmq
from pika.adapters.blocking_connection import BlockingChannel

from pylib.amqp.outbox import Outbox
from pylib.amqp.publisher import AmqpPublisher
from pylib.chain.attachment import Attachment
from pylib.chain.envelope import Envelope
from pylib.chain.settle import (
    ACK_KIND,
    PUBLISH_KIND,
    Publication,
    Settlement,
    done_envelope,
    publish_envelope,
)
from pylib.chain.sockets import Sender, bind_pull, inproc
from pylib.chain.sockets import receive as receive_parts
from pylib.retry import RetryPolicy
from pylib.runtime.worker import RestartBudget
from tests.support.broker import BROKER, Peer, unique_exchange
from tests.support.metrics import sample
from tests.support.net import free_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker

Make = Callable[..., AmqpPublisher]


def address(role: str) -> str:
    """An inproc address no other test uses."""
    return inproc(f"{role}-{uuid.uuid4().hex[:8]}")


def declare(exchange: str) -> Callable[[BlockingChannel], None]:
    def setup(channel: BlockingChannel) -> None:
        channel.exchange_declare(exchange, exchange_type="topic")

    return setup


def image(exchange: str, name: bytes) -> Publication:
    """An image event as the peer decodes it: a msgpack map naming it."""
    body = msgpack.packb({"name": name.decode()})
    return Publication(exchange, "event.notify.snapshot.test.image", body)


def names(images: list[dict[str, Any]]) -> list[str]:
    return [body["name"] for body in images]


def receive(pull: zmq.Socket[bytes], count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Bodies of up to ``count`` envelopes arriving at ``pull`` within ``timeout``."""
    bodies: list[dict[str, Any]] = []

    def received_all() -> bool:
        if len(bodies) < count and pull.poll(50):
            envelope = Envelope.unpack(receive_parts(pull))
            assert envelope.kind == ACK_KIND
            bodies.append(envelope.body)
        return len(bodies) >= count

    wait_until(received_all, timeout, step=0)
    return bodies


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Starts publishers on a fresh outbox each; stops them at the end."""
    started: list[AmqpPublisher] = []

    def starter(name: str, exchange: str, **options: Any) -> AmqpPublisher:
        options.setdefault("params", BROKER)
        options.setdefault("setup", declare(exchange))
        options.setdefault("outbox_path", tmp_path / f"{name}.sqlite3")
        options.setdefault("inbox", address(name))
        options.setdefault("ack_to", None)
        publisher = AmqpPublisher(name, threading.Event(), **options)
        publisher.start()
        started.append(publisher)
        return publisher

    yield starter
    for publisher in started:
        assert publisher.stop_and_join(10)


@pytest.fixture
def peer() -> Iterator[Peer]:
    subscriber = Peer(unique_exchange())
    try:
        yield subscriber
    finally:
        subscriber.close()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5672) as running:
        yield running


def proxied(proxy: TcpProxy) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", proxy.port, connection_attempts=1)


def test_acks_go_to_their_reply_address_with_every_key(make: Make, peer: Peer) -> None:
    uploads, fallback = address("upload-acks"), address("trigger-acks")
    upload_pull, fallback_pull = bind_pull(uploads), bind_pull(fallback)
    publisher = make("pub-reply", peer.exchange, ack_to=fallback)
    sender = Sender(publisher.inbox)
    try:
        sender.send(
            publish_envelope(
                image(peer.exchange, b"one"), Settlement({"reply_to": uploads, "path": "/a.jpg"})
            )
        )
        sender.send(
            publish_envelope(image(peer.exchange, b"two"), Settlement({"epoch": 1, "tag": 7}))
        )
        sender.send(done_envelope(Settlement({"reply_to": uploads, "path": "/b.jpg"}, 2)))
        to_uploads = receive(upload_pull, 2)
        to_fallback = receive(fallback_pull, 1)
        images = peer.wait_for_images(2)
    finally:
        sender.close()
        upload_pull.close(linger=0)
        fallback_pull.close(linger=0)
    assert to_uploads == [
        {"reply_to": uploads, "path": "/a.jpg", "parts": 1, "requeue": False},
        {"reply_to": uploads, "path": "/b.jpg", "parts": 2, "requeue": False},
    ]
    assert to_fallback == [{"epoch": 1, "tag": 7, "parts": 1, "requeue": False}]
    assert names(images) == ["one", "two"]


def test_confirmed_rows_leave_the_disk_once_no_more_messages_come(
    make: Make, peer: Peer, tmp_path: Path
) -> None:
    publisher = make("pub-removal", peer.exchange)
    sender = Sender(publisher.inbox)
    try:
        for name in (b"one", b"two", b"three"):
            sender.send(publish_envelope(image(peer.exchange, name), Settlement(None)))
        assert names(peer.wait_for_images(3)) == ["one", "two", "three"]
    finally:
        sender.close()

    def rows_on_disk() -> int:
        with sqlite3.connect(tmp_path / "pub-removal.sqlite3") as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # Confirmed at once, off the disk with the next commit; none comes, so on their own.
    assert wait_until(lambda: publisher.outbox_depth == 0, timeout=5)
    assert wait_until(lambda: rows_on_disk() == 0, timeout=5)


def test_full_outbox_hands_back_or_reports_every_message(
    make: Make, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.cut()  # the broker stays away, so the outbox only fills
    exchange = unique_exchange()
    uploads = address("upload-acks")
    upload_pull = bind_pull(uploads)
    dropped = sample("amqp_publish_failures_total", reason="dropped")
    publisher = make("pub-full", exchange, params=proxied(proxy), outbox_max=1)
    sender = Sender(publisher.inbox)
    try:
        sender.send(
            publish_envelope(image(exchange, b"1"), Settlement({"reply_to": uploads, "path": "1"}))
        )
        sender.send(
            publish_envelope(image(exchange, b"2"), Settlement({"reply_to": uploads, "path": "2"}))
        )
        sender.send(publish_envelope(image(exchange, b"3"), Settlement(None)))
        acks = receive(upload_pull, 2)
        assert wait_until(
            lambda: sample("amqp_publish_failures_total", reason="dropped") == dropped + 1
        )
    finally:
        sender.close()
        upload_pull.close(linger=0)
    assert [(ack["path"], ack["requeue"]) for ack in acks] == [("1", False), ("2", True)]
    assert "dropped: no one to hand it back to" in caplog.text


def test_broker_nack_is_retried_after_a_growing_pause(
    make: Make, peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pylib.amqp.publisher")
    refusing = f"{peer.exchange}.refusing"

    def setup(channel: BlockingChannel) -> None:
        channel.exchange_declare(peer.exchange, exchange_type="topic")
        # A queue that takes nothing: the broker nacks every message routed to it.
        channel.queue_declare(
            refusing, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        channel.queue_bind(refusing, peer.exchange, "#")

    acks = address("acks")
    ack_pull = bind_pull(acks)
    nacks = sample("amqp_publish_failures_total", reason="nack")
    publisher = make(
        "pub-nack", peer.exchange, setup=setup, nack_retry=RetryPolicy(first=0.5, maximum=2.0)
    )
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        sender.send(
            publish_envelope(image(peer.exchange, b"head"), Settlement({"reply_to": acks, "n": 1}))
        )
        time.sleep(2.2)  # tries at 0, 0.5 and 1.5 s; without a pause, one every 100 ms
        refused = sample("amqp_publish_failures_total", reason="nack") - nacks
        # The refused head holds back publishing, not intake: the next one is stored and acked.
        sender.send(
            publish_envelope(image(peer.exchange, b"next"), Settlement({"reply_to": acks, "n": 2}))
        )
        stored = receive(ack_pull, 2, timeout=1.0)
        warnings = [r for r in caplog.records if "broker refused message" in r.getMessage()]
        channel = peer.connection.channel()
        channel.queue_delete(refusing)
        channel.close()
        peer.pump_until(lambda: "next" in names(peer.images()), 10)
    finally:
        sender.close()
        ack_pull.close(linger=0)
    assert 2 <= refused <= 4
    assert len(warnings) == refused  # one line per pause, saying how long
    assert "trying again in 0.5 s" in warnings[0].getMessage()
    assert "trying again in 1.0 s" in warnings[1].getMessage()
    assert [ack["n"] for ack in stored] == [1, 2]
    # A nacked message may still have reached other queues: the peer can see "head" again.
    assert list(dict.fromkeys(names(peer.images()))) == ["head", "next"]


def test_outbox_that_cannot_be_written_holds_the_message(
    make: Make, peer: Peer, tmp_path: Path
) -> None:
    acks = address("acks")
    ack_pull = bind_pull(acks)
    errors = sample("amqp_publish_failures_total", reason="outbox_error")
    crashes = sample("thread_crashes_total", thread="pub-broken")
    outbox_path = tmp_path / "broken.sqlite3"
    publisher = make("pub-broken", peer.exchange, outbox_path=outbox_path)
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        # A real SQLite failure: the table is gone under the publisher's open connection.
        with sqlite3.connect(outbox_path) as db:
            db.execute("DROP TABLE outbox")
        sender.send(
            publish_envelope(image(peer.exchange, b"kept"), Settlement({"reply_to": acks, "n": 1}))
        )
        sender.send(
            publish_envelope(image(peer.exchange, b"after"), Settlement({"reply_to": acks, "n": 2}))
        )
        assert wait_until(
            lambda: sample("amqp_publish_failures_total", reason="outbox_error") >= errors + 2
        )
        assert receive(ack_pull, 1, timeout=0.3) == []  # not acked while not stored
        assert publisher.healthy
        Outbox(outbox_path).close()  # the table is back
        stored = receive(ack_pull, 2)
        images = peer.wait_for_images(2)
    finally:
        sender.close()
        ack_pull.close(linger=0)
    assert [ack["n"] for ack in stored] == [1, 2]
    assert names(images) == ["kept", "after"]
    assert sample("thread_crashes_total", thread="pub-broken") == crashes


def test_stop_hands_back_what_the_outbox_could_not_store(
    make: Make, peer: Peer, tmp_path: Path
) -> None:
    acks = address("acks")
    ack_pull = bind_pull(acks)
    outbox_path = tmp_path / "broken.sqlite3"
    errors = sample("amqp_publish_failures_total", reason="outbox_error")
    publisher = make("pub-broken-stop", peer.exchange, outbox_path=outbox_path)
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        with sqlite3.connect(outbox_path) as db:
            db.execute("DROP TABLE outbox")
        sender.send(
            publish_envelope(image(peer.exchange, b"held"), Settlement({"reply_to": acks, "n": 1}))
        )
        sender.send(
            publish_envelope(
                image(peer.exchange, b"behind"), Settlement({"reply_to": acks, "n": 2})
            )
        )
        sender.send(done_envelope(Settlement({"reply_to": acks, "n": 3})))
        assert wait_until(
            lambda: sample("amqp_publish_failures_total", reason="outbox_error") > errors
        )
        assert publisher.stop_and_join(10)
        returned = receive(ack_pull, 3)
    finally:
        sender.close()
        ack_pull.close(linger=0)
    assert [(ack["n"], ack["requeue"]) for ack in returned] == [(1, True), (2, True), (3, False)]


class CrashesOnce(AmqpPublisher):
    """Its thread dies on a ``crash`` message; the restarted one is the real thing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs = 0

    def work(self) -> None:
        self.runs += 1
        super().work()

    def on_messages(self, envelopes: list[Envelope]) -> None:
        if any(envelope.kind == "crash" for envelope in envelopes):
            raise RuntimeError("injected crash")
        super().on_messages(envelopes)


def test_publisher_restarted_after_a_crash_still_gets_requests(tmp_path: Path, peer: Peer) -> None:
    crashes = sample("thread_crashes_total", thread="pub-restart")
    publisher = CrashesOnce(
        "pub-restart",
        threading.Event(),
        params=BROKER,
        setup=declare(peer.exchange),
        outbox_path=tmp_path / "restart.sqlite3",
        inbox=address("pub-restart"),
        budget=RestartBudget(restarts=3, window=60, delay=0.05),
    )
    publisher.start()
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        assert sender.send(
            publish_envelope(image(peer.exchange, b"before"), Settlement(None)), block=False
        )
        assert len(peer.wait_for_images(1)) == 1
        assert sender.send(Envelope("crash"), block=False)
        assert wait_until(lambda: publisher.runs == 2)
        assert publisher.connected.wait(10)
        # Through the socket connected before the restart.
        assert sender.send(
            publish_envelope(image(peer.exchange, b"after"), Settlement(None)), block=False
        )
        images = peer.wait_for_images(2)
    finally:
        sender.close()
        assert publisher.stop_and_join(10)
    assert names(images) == ["before", "after"]
    assert sample("thread_crashes_total", thread="pub-restart") == crashes + 1


def test_last_flush_at_stop_is_bounded_and_keeps_the_rest(
    make: Make, peer: Peer, tmp_path: Path
) -> None:
    # More than a bounded flush can publish (the stop gives it 0.3 s), on a fast day too.
    total = 20_000
    outbox_path = tmp_path / "backlog.sqlite3"
    with Outbox(outbox_path, max_entries=total) as outbox:
        for first in range(0, total, 1_000):
            outbox.append_many(
                [
                    (
                        peer.exchange,
                        "event.notify.x",
                        msgpack.packb({"n": n}),
                        {"message_id": str(n)},
                    )
                    for n in range(first, first + 1_000)
                ]
            )
    publisher = make("pub-backlog", peer.exchange, outbox_path=outbox_path, stop_timeout=0.3)
    assert publisher.connected.wait(10)
    started = time.monotonic()
    assert publisher.stop_and_join(10)
    elapsed = time.monotonic() - started
    with Outbox(outbox_path) as outbox:
        left = {entry.headers["message_id"] for entry in outbox.peek(total)}
    peer.pump_until(lambda: len(peer.messages) >= total - len(left), 30, each=0.2)
    published = [props.message_id for _, props, _ in peer.messages]
    assert left, "everything was published: the flush had no deadline"
    assert elapsed < 3.0
    assert len(published) == len(set(published))
    assert set(published) | left == {str(n) for n in range(total)}
    assert not set(published) & left


def test_malformed_requests_are_settled_and_the_next_is_published(make: Make, peer: Peer) -> None:
    """A request nothing can be published from is acked and counted; it never blocks the rest."""
    acks = address("malformed-acks")
    ack_pull = bind_pull(acks)
    malformed = sample("amqp_publish_failures_total", reason="malformed")
    publisher = make("pub-malformed", peer.exchange)
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        owed = Settlement({"reply_to": acks, "n": 1})
        sender.send(Envelope(PUBLISH_KIND, {"exchange": peer.exchange, **owed.fields()}))
        sender.send(Envelope("unknown.kind", Settlement({"reply_to": acks, "n": 2}).fields()))
        bad_file = publish_envelope(
            image(peer.exchange, b"x"), Settlement({"reply_to": acks, "n": 3})
        )
        bad_file.body["attachment"] = ["/a.jpg", -1, "many"]
        sender.send(bad_file)
        past_end = publish_envelope(
            image(peer.exchange, b"y"), Settlement({"reply_to": acks, "n": 5})
        )
        past_end.body["attachment"] = ["/a.jpg", 2, 10**6]
        sender.send(past_end)
        sender.send(
            publish_envelope(image(peer.exchange, b"next"), Settlement({"reply_to": acks, "n": 4}))
        )
        returned = receive(ack_pull, 5)
        images = peer.wait_for_images(1)
    finally:
        sender.close()
        ack_pull.close(linger=0)
    assert sorted((ack["n"], ack["requeue"]) for ack in returned) == [
        (1, False),
        (2, False),
        (3, False),
        (4, False),
        (5, False),
    ]
    assert names(images) == ["next"]
    assert sample("amqp_publish_failures_total", reason="malformed") == malformed + 4


def test_a_backlog_read_from_disk_gets_its_images_back_from_their_files(
    make: Make, peer: Peer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored while the broker is away, published by the next start from the outbox file:
    each image comes back from its snapshot file; one whose file is gone is parked."""
    outbox_path = tmp_path / "backlog.sqlite3"
    files = {}
    for name in ("kept", "lost", "also kept"):
        files[name] = tmp_path / f"{name}.jpg"
        files[name].write_bytes(os.urandom(30_000))
    away = pika.ConnectionParameters("127.0.0.1", free_port(), connection_attempts=1)
    first = make("pub-backlog-1", peer.exchange, params=away, outbox_path=outbox_path)
    sender = Sender(first.inbox)
    try:
        for name, path in files.items():
            body = msgpack.packb({"name": name, "image": path.read_bytes()})
            at = len(body) - len(path.read_bytes())
            publication = Publication(
                peer.exchange,
                "event.notify.snapshot.test.image",
                body,
                attachment=Attachment(str(path), at, path.stat().st_size),
            )
            sender.send(publish_envelope(publication, Settlement(None)))
        assert wait_until(lambda: first.outbox_depth == 3)
    finally:
        sender.close()
    assert first.stop_and_join(10)
    with sqlite3.connect(outbox_path) as db:  # the rows hold no image
        sizes = [int(n) for (n,) in db.execute("SELECT length(body) FROM outbox")]
    assert max(sizes) < 100
    files["lost"].unlink()

    caplog.set_level(logging.ERROR, logger="pylib.amqp.publisher")
    second = make("pub-backlog-2", peer.exchange, outbox_path=outbox_path)
    images = peer.wait_for_images(2)
    assert wait_until(lambda: second.outbox_depth == 0)

    assert [(body["name"], body["image"]) for body in images] == [
        ("kept", files["kept"].read_bytes()),
        ("also kept", files["also kept"].read_bytes()),
    ]
    with Outbox(outbox_path) as box:
        [(parked, reason)] = box.parked()
    assert parked.attachment is not None
    assert parked.attachment.path == str(files["lost"])
    assert "lost.jpg cannot be read" in reason
    assert "lost.jpg cannot be read" in caplog.text
    assert "parked it" in caplog.text


def test_row_for_a_missing_exchange_is_parked_and_the_rest_flow(
    make: Make, peer: Peer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row the broker refuses for good (404 NOT_FOUND) is set aside, not retried forever."""
    caplog.set_level(logging.ERROR, logger="pylib.amqp.publisher")
    outbox_path = tmp_path / "poison.sqlite3"
    missing = unique_exchange()  # declared by nobody
    with Outbox(outbox_path) as outbox:
        for exchange, name in [(peer.exchange, b"a"), (missing, b"poison"), (peer.exchange, b"b")]:
            publication = image(exchange, name)
            outbox.append(publication.exchange, publication.routing_key, publication.body)
    parked = sample("outbox_parked_total")
    publisher = make("pub-poison", peer.exchange, outbox_path=outbox_path)
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        sender.send(publish_envelope(image(peer.exchange, b"c"), Settlement(None)))
        images = peer.wait_for_images(3)
        peer.pump(0.5)
    finally:
        sender.close()
    assert publisher.stop_and_join(10)
    assert names(peer.images()) == ["a", "b", "c"]
    assert names(images) == ["a", "b", "c"]
    assert sample("outbox_parked_total") == parked + 1
    with Outbox(outbox_path) as outbox:
        assert len(outbox) == 0
        [(entry, reason)] = outbox.parked()
    assert entry.exchange == missing
    assert msgpack.unpackb(entry.body) == {"name": "poison"}
    assert reason.startswith("404 NOT_FOUND")
    lines = [r.getMessage() for r in caplog.records if "parked" in r.getMessage()]
    assert len(lines) == 1  # logged once
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]


def test_event_no_queue_is_bound_to_is_dropped_and_the_next_flows(
    make: Make, peer: Peer, tmp_path: Path
) -> None:
    """No ``mandatory``: the broker drops an unroutable event, as the original's were."""
    lonely = unique_exchange()

    def setup(channel: BlockingChannel) -> None:
        channel.exchange_declare(peer.exchange, exchange_type="topic")
        channel.exchange_declare(lonely, exchange_type="topic")  # no queue bound to it

    acks = address("unroutable-acks")
    ack_pull = bind_pull(acks)
    failures = {
        reason: sample("amqp_publish_failures_total", reason=reason)
        for reason in ("nack", "parked", "outbox_error")
    }
    outbox_path = tmp_path / "unroutable.sqlite3"
    publisher = make("pub-unroutable", peer.exchange, setup=setup, outbox_path=outbox_path)
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        sender.send(
            publish_envelope(image(lonely, b"nobody"), Settlement({"reply_to": acks, "n": 1}))
        )
        sender.send(
            publish_envelope(image(peer.exchange, b"next"), Settlement({"reply_to": acks, "n": 2}))
        )
        returned = receive(ack_pull, 2)
        images = peer.wait_for_images(1)
    finally:
        sender.close()
        ack_pull.close(linger=0)
    assert publisher.stop_and_join(10)
    assert [(ack["n"], ack["requeue"]) for ack in returned] == [(1, False), (2, False)]
    assert names(images) == ["next"]
    with Outbox(outbox_path) as outbox:
        assert len(outbox) == 0  # confirmed and removed: not retried, not blocking
        assert outbox.parked() == []
    for reason, before in failures.items():
        assert sample("amqp_publish_failures_total", reason=reason) == before


def test_publisher_on_a_damaged_outbox_file_starts_fresh_and_publishes(
    make: Make, peer: Peer, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "junk.sqlite3"
    outbox_path.write_bytes(b"\x00junk that is no database\n" * 300)
    publisher = make("pub-junk", peer.exchange, outbox_path=outbox_path)
    sender = Sender(publisher.inbox)
    try:
        assert publisher.connected.wait(10)
        sender.send(publish_envelope(image(peer.exchange, b"fresh"), Settlement(None)))
        images = peer.wait_for_images(1)
    finally:
        sender.close()
    assert names(images) == ["fresh"]
    assert [p.name.split(".damaged-")[0] for p in tmp_path.glob("junk.sqlite3.damaged-*")] == [
        "junk.sqlite3"
    ]


def test_done_mark_asking_for_requeue_hands_the_work_back(make: Make, peer: Peer) -> None:
    """A part that could not be kept (a full disk) comes back to its owner, not acked as done."""
    acks = address("requeue-acks")
    ack_pull = bind_pull(acks)
    publisher = make("pub-requeue", peer.exchange)
    sender = Sender(publisher.inbox)
    try:
        sender.send(done_envelope(Settlement({"reply_to": acks, "n": 1}), requeue=True))
        sender.send(done_envelope(Settlement({"reply_to": acks, "n": 2})))
        returned = receive(ack_pull, 2)
    finally:
        sender.close()
        ack_pull.close(linger=0)
    assert [(ack["n"], ack["requeue"]) for ack in returned] == [(1, True), (2, False)]


def test_events_are_published_persistent(make: Make, peer: Peer, tmp_path: Path) -> None:
    """delivery_mode 2 on every event, however it goes out: a backlog found in the outbox
    (the first message to an exchange alone, the rest together), then one sent live."""
    outbox_path = tmp_path / "persistent.sqlite3"
    with Outbox(outbox_path) as outbox:
        outbox.append_many(
            [
                (peer.exchange, "event.notify.snapshot.test.image", msgpack.packb({"name": n}), {})
                for n in ("one", "two", "three", "four")
            ]
        )
    publisher = make("pub-persistent", peer.exchange, outbox_path=outbox_path)
    sender = Sender(publisher.inbox)
    try:
        assert len(peer.wait_for_images(4)) == 4
        sender.send(publish_envelope(image(peer.exchange, b"live"), Settlement(None)))
        images = peer.wait_for_images(5)
    finally:
        sender.close()
    assert names(images) == ["one", "two", "three", "four", "live"]
    modes = [props.delivery_mode for key, props, _ in peer.messages if key.endswith(".image")]
    assert modes == [pika.DeliveryMode.Persistent.value] * 5
