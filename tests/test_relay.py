"""Relays pass envelopes over real inproc sockets in order, lose none, and survive bad input."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pylib.envelope import Envelope, EnvelopeError
from pylib.relay import Relay, Sender, inproc
from pylib.worker import RestartBudget, Worker
from pylib.zmqctx import shared_context
from tests.metrics import sample


class Sink:
    """Collects what reaches the end of a chain."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []
        self.lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        with self.lock:
            self.items.append(envelope)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < count and time.monotonic() < deadline:
            time.sleep(0.01)


def tag(stage: str):  # type: ignore[no-untyped-def]
    def handler(envelope: Envelope) -> Envelope:
        return Envelope(envelope.kind, {**envelope.body, "path": [*envelope.body["path"], stage]})

    return handler


@pytest.fixture
def stop_event() -> threading.Event:
    return threading.Event()


@pytest.fixture
def chain(stop_event: threading.Event) -> Iterator[tuple[list[Relay], Sink]]:
    sink = Sink()
    relays = [
        Relay("sink", stop_event, sink),
        Relay("third", stop_event, tag("third"), outbox=inproc("sink")),
        Relay("second", stop_event, tag("second"), outbox=inproc("third")),
        Relay("first", stop_event, tag("first"), outbox=inproc("second")),
    ]
    for relay in relays:
        relay.start()
        assert relay.ready.wait(5)
    yield relays, sink
    # Source side first, so each relay drains what its upstream handed over.
    for relay in reversed(relays):
        assert relay.stop_and_join(5)


def test_ten_thousand_messages_in_order(chain: tuple[list[Relay], Sink]) -> None:
    _, sink = chain
    sender = Sender(inproc("first"))
    try:
        for seq in range(10_000):
            sender.send(Envelope("n", {"seq": seq, "path": []}))
    finally:
        sender.close()
    sink.wait_for(10_000)
    assert [item.body["seq"] for item in sink.items] == list(range(10_000))
    assert all(item.body["path"] == ["first", "second", "third"] for item in sink.items)


class Source(Worker):
    """Sends numbered envelopes as fast as it can until stopped; counts what it handed over."""

    def __init__(self, stop_event: threading.Event) -> None:
        super().__init__("source", stop_event)
        self.sent = 0

    def work(self) -> None:
        sender = Sender(inproc("first"))
        try:
            while self.should_keep_running():
                sender.send(Envelope("n", {"seq": self.sent, "path": []}))
                self.sent += 1
        finally:
            sender.close()


def test_stop_mid_stream_loses_nothing_accepted(
    chain: tuple[list[Relay], Sink], stop_event: threading.Event
) -> None:
    relays, sink = chain
    source = Source(stop_event)
    source.start()
    sink.wait_for(2_000)
    assert source.stop_and_join(5)
    for relay in reversed(relays):
        assert relay.stop_and_join(5)
    assert source.sent >= 2_000
    assert len(sink.items) == source.sent
    assert [item.body["seq"] for item in sink.items] == list(range(source.sent))


def test_bad_messages_are_counted_and_the_next_one_flows(
    chain: tuple[list[Relay], Sink],
) -> None:
    _, sink = chain
    malformed_before = sample("relay_messages_rejected_total", relay="first", reason="malformed")
    failed_before = sample("relay_messages_rejected_total", relay="first", reason="KeyError")
    socket = shared_context().socket(__import__("zmq").PUSH)
    socket.connect(inproc("first"))
    try:
        socket.send(b"\xc1 not msgpack")
        socket.send(b"\x93\x01\x02\x03")  # msgpack, but not an envelope
        socket.send(Envelope("n", {"no_path": True}).pack())  # the handler raises KeyError
        socket.send(Envelope("n", {"seq": 1, "path": []}).pack())
    finally:
        socket.close()
    sink.wait_for(1)
    assert [item.body["seq"] for item in sink.items] == [1]
    assert (
        sample("relay_messages_rejected_total", relay="first", reason="malformed")
        == malformed_before + 2
    )
    assert (
        sample("relay_messages_rejected_total", relay="first", reason="KeyError")
        == failed_before + 1
    )


def test_envelope_round_trip_and_rejects() -> None:
    original = Envelope("snapshot", {"image": b"\xff\xd8", "n": 1})
    assert Envelope.unpack(original.pack()) == original
    with pytest.raises(EnvelopeError):
        Envelope.unpack(b"\xc1")
    with pytest.raises(EnvelopeError):
        Envelope.unpack(Envelope("x").pack()[:-3])


class Crasher(Worker):
    def __init__(self, stop_event: threading.Event, crashes: int, fatal: list[str]) -> None:
        super().__init__(
            "crasher",
            stop_event,
            budget=RestartBudget(restarts=2, window=60, delay=0.01),
            on_fatal=lambda name, exc: fatal.append(name),
        )
        self.crashes_left = crashes
        self.starts = 0
        self.stops = 0

    def on_thread_start(self) -> None:
        self.starts += 1

    def on_thread_stop(self) -> None:
        self.stops += 1

    def work(self) -> None:
        if self.crashes_left:
            self.crashes_left -= 1
            raise RuntimeError("boom")
        while self.should_keep_running():
            time.sleep(0.01)


def test_worker_restarts_within_budget(stop_event: threading.Event) -> None:
    fatal: list[str] = []
    worker = Crasher(stop_event, crashes=2, fatal=fatal)
    worker.start()
    deadline = time.monotonic() + 5
    while worker.starts < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.starts == 3
    assert worker.healthy
    assert worker.stop_and_join(5)
    assert worker.stops == 3
    assert fatal == []


def test_worker_that_keeps_dying_is_fatal(stop_event: threading.Event) -> None:
    fatal: list[str] = []
    worker = Crasher(stop_event, crashes=100, fatal=fatal)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert fatal == ["crasher"]
    assert isinstance(worker.failure, RuntimeError)
    assert not worker.healthy
    assert worker.starts == 3  # the first run and two restarts
