"""Relays pass envelopes over real inproc sockets in order, lose none, and survive bad input."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from pylib.chain.context import shared_context
from pylib.chain.envelope import BLOB_MIN, Envelope, EnvelopeError, new_id
from pylib.chain.sockets import HWM, Sender, inproc
from pylib.chain.stage import Relay
from pylib.runtime.worker import RestartBudget, Worker, WorkerStartError
from tests.support.crash import CrashesOnce as CrashingWorker
from tests.support.metrics import sample
from tests.support.wait import wait_until


class Sink:
    """Collects what reaches the end of a chain."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []
        self.lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        with self.lock:
            self.items.append(envelope)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.items) >= count, timeout, step=0.01)


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
    malformed_before = sample("chain_messages_rejected_total", stage="first", reason="malformed")
    failed_before = sample("chain_messages_rejected_total", stage="first", reason="KeyError")
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
        sample("chain_messages_rejected_total", stage="first", reason="malformed")
        == malformed_before + 2
    )
    assert (
        sample("chain_messages_rejected_total", stage="first", reason="KeyError")
        == failed_before + 1
    )


def test_envelope_round_trip_and_rejects() -> None:
    original = Envelope("snapshot", {"image": b"\xff\xd8", "n": 1})
    assert Envelope.unpack(original.pack()) == original
    with pytest.raises(EnvelopeError):
        Envelope.unpack(b"\xc1")
    with pytest.raises(EnvelopeError):
        Envelope.unpack(Envelope("x").pack()[:-3])


def test_large_values_travel_as_frames_of_their_own() -> None:
    image, event = b"\xff\xd8" + bytes(BLOB_MIN), b"e" * (BLOB_MIN + 5)
    original = Envelope("snapshot", {"image": image, "event": event, "small": b"\x01", "n": 1})

    head, *blobs = original.frames()

    assert blobs == [image, event]
    assert len(head) < 200  # the envelope itself holds neither
    assert Envelope.unpack([head, *blobs]) == original
    assert Envelope.unpack([memoryview(head), *(memoryview(blob) for blob in blobs)]) == original
    assert Envelope.unpack(original.pack()) == original  # one frame still reads
    # A body with nothing large is one frame, as pack() gives.
    small = Envelope("n", {"small": b"\x01"})
    assert small.frames() == [small.pack()]


def test_ids_are_random_uuids_unique_in_a_forked_child_too() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for each in ids[:100]:
        parsed = uuid.UUID(hex=each)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, each)
    # A forked child does not repeat its parent's ids.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != new_id()


def _bad_reference() -> list[bytes]:
    head, _ = Envelope("x", {"image": bytes(BLOB_MIN)}).frames()
    reference = b"\xd6\x01\x00\x00\x00\x00"  # msgpack fixext 4, type 1: frame 0
    assert head.count(reference) == 1
    return [head.replace(reference, b"\xd6\x01\x00\x00\x00\x07"), bytes(BLOB_MIN)]


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(lambda head, blobs: [head], id="a frame missing"),
        pytest.param(lambda head, blobs: [head, *blobs, b"more"], id="a frame too many"),
        pytest.param(lambda head, blobs: [], id="no frames"),
        pytest.param(lambda head, blobs: _bad_reference(), id="a reference past the frames"),
    ],
)
def test_frames_that_do_not_match_their_envelope_are_rejected(
    parts: Callable[[bytes, list[bytes]], list[bytes]],
) -> None:
    head, *blobs = Envelope("x", {"image": bytes(BLOB_MIN), "event": bytes(BLOB_MIN)}).frames()
    with pytest.raises(EnvelopeError):
        Envelope.unpack(parts(head, blobs))


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
    assert wait_until(lambda: worker.starts >= 3, 5, step=0.01), f"{worker.starts} start(s)"
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


class CrashesOnce(CrashingWorker, Relay):
    """A Relay whose first run dies once ``crash`` is set."""


def test_relay_restarted_after_a_crash_still_gets_what_upstream_sends(
    stop_event: threading.Event,
) -> None:
    sink = Sink()
    sink_relay = Relay("restart-sink", stop_event, sink)
    flaky = CrashesOnce(
        "flaky",
        stop_event,
        lambda envelope: envelope,
        outbox=inproc("restart-sink"),
        budget=RestartBudget(restarts=3, window=60, delay=0.05),
    )
    for relay in (sink_relay, flaky):
        relay.start()
        assert relay.ready.wait(5)
    crashes_before = sample("thread_crashes_total", thread="flaky")
    sender = Sender(inproc("flaky"))
    try:
        # Queued before the crash, so they wait in the inbox across the restart.
        for seq in range(20):
            assert sender.send(Envelope("n", {"seq": seq}), block=False)
        flaky.crash.set()
        assert wait_until(
            lambda: sample("thread_crashes_total", thread="flaky") == crashes_before + 1, 5
        )
        sink.wait_for(20, timeout=5)
        # After the restart, through the very socket that was connected before it.
        for seq in range(20, 30):
            assert sender.send(Envelope("n", {"seq": seq}), block=False)
        sink.wait_for(30, timeout=5)
    finally:
        sender.close()
        assert flaky.stop_and_join(5)
        assert sink_relay.stop_and_join(5)
    assert [item.body["seq"] for item in sink.items] == list(range(30))
    assert flaky.runs == 2
    assert flaky.healthy


def test_inproc_queues_hold_few_messages(stop_event: threading.Event) -> None:
    """A stalled stage makes its upstream wait after a few dozen messages, not thousands."""
    gate = threading.Event()
    entered = threading.Event()
    handled: list[int] = []

    def stalled(envelope: Envelope) -> None:
        entered.set()
        gate.wait(10)
        handled.append(envelope.body["seq"])

    relay = Relay("stalled", stop_event, stalled)
    relay.start()
    assert relay.ready.wait(5)
    sender = Sender(inproc("stalled"))
    queued = 0
    try:
        # The stage takes up to a batch of what is queued before handling the first: a
        # thread woken late on a busy machine would take dozens into memory, and the
        # queue would refill behind them (150 seen). Stalled on one message first, only
        # the sockets' queues are left to count.
        assert sender.send(Envelope("n", {"seq": queued}), block=False)
        queued += 1
        assert entered.wait(5)
        while queued < 5_000 and sender.send(Envelope("n", {"seq": queued}), block=False):
            queued += 1
    finally:
        gate.set()
        sender.close()
    assert relay.stop_and_join(5)
    # ZeroMQ's default would queue 2000; each end now holds HWM (plus the one in the handler).
    assert 2 * HWM <= queued <= 2 * HWM + 2
    assert handled == list(range(queued))


class Opener(Crasher):
    """Counts the once-per-thread hooks too; its first open fails when ``open_fails``."""

    def __init__(
        self, stop_event: threading.Event, crashes: int, fatal: list[str], open_fails: bool
    ) -> None:
        super().__init__(stop_event, crashes, fatal)
        self.open_fails = open_fails
        self.opens = 0
        self.closes = 0
        self.open_now = 0

    def on_thread_open(self) -> None:
        self.opens += 1
        self.open_now += 1
        if self.open_fails:
            self.open_fails = False
            raise RuntimeError("cannot open")

    def on_thread_close(self) -> None:
        self.closes += 1
        self.open_now -= 1

    def work(self) -> None:
        assert self.open_now == 1
        super().work()


def test_thread_resources_open_once_across_restarts(stop_event: threading.Event) -> None:
    fatal: list[str] = []
    worker = Opener(stop_event, crashes=1, fatal=fatal, open_fails=False)
    worker.start()
    assert wait_until(lambda: worker.starts >= 2, 5)
    assert worker.stop_and_join(5)
    assert fatal == []
    # A crash in work() opens nothing again.
    assert worker.opens == worker.closes == 1
    assert worker.open_now == 0
    assert worker.starts == worker.stops == 2


def test_a_thread_that_cannot_open_fails_its_start(stop_event: threading.Event) -> None:
    """No restart loop at start: start() raises with the cause, and what was opened is released."""
    fatal: list[str] = []
    worker = Opener(stop_event, crashes=0, fatal=fatal, open_fails=True)
    with pytest.raises(WorkerStartError, match="cannot open"):
        worker.start()
    assert not worker.is_alive()
    assert not worker.healthy
    assert worker.opens == worker.closes == 1
    assert worker.starts == 0
    assert fatal == []
