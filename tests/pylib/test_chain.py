"""The one stage shape, the chain declared once, the ack protocol and the retry policy."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylib.amqp.outbox import Outbox, OutboxFullError
from pylib.chain.envelope import Envelope
from pylib.chain.settle import (
    DONE_KIND,
    AckInbox,
    PartCounter,
    Replies,
    Settlement,
    ack_token,
    settle_failed,
    stop_taking_acks_directly,
    take_acks_directly,
)
from pylib.chain.sockets import Sender
from pylib.chain.stage import Relay, Stage
from pylib.chain.topology import STOP_SHARE, Chain
from pylib.retry import RetryPolicy
from pylib.runtime.worker import Worker, WorkerStartError
from snapshot_processor import config
from snapshot_processor.camera.spec import MAX_BACKOFF, CameraSpec
from tests.support.metrics import sample
from tests.support.wait import wait_until
from tests.support.wire import Wire, wire


@pytest.fixture
def ends() -> Iterator[Wire]:
    with wire("stage") as made:
        yield made


@pytest.fixture
def stages() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for stage in started:
        assert stage.stop_and_join(5)


def owed(tag: int) -> Settlement:
    return Settlement(ack_token("inproc://owner", tag=tag))


# --- RetryPolicy ------------------------------------------------------------------------
def test_retry_policy_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(first=0.5, factor=2, maximum=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_policy_bounds_its_attempts() -> None:
    assert list(RetryPolicy(first=1, attempts=3).delays()) == [1.0, 2.0]
    backoff = RetryPolicy(first=1, attempts=2).backoff()
    backoff.next()
    assert not backoff.exhausted
    backoff.next()
    assert backoff.exhausted
    backoff.reset()
    assert backoff.next() == 1.0


def test_retry_policy_jitter_only_shortens() -> None:
    policy = RetryPolicy(first=1, maximum=1, jitter=0.5)
    delays = [policy.delay(1) for _ in range(200)]
    assert all(0.5 <= delay <= 1.0 for delay in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "options", [{"first": -1}, {"factor": 0.5}, {"jitter": 2}, {"attempts": 0}, {"maximum": 0.1}]
)
def test_retry_policy_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_camera_back_off_is_capped() -> None:
    # The camera client doubled without a bound: ten retries from 0.2 s reached 102 s.
    spec = CameraSpec(
        key="cam", vendor="foscam", host="h", port=88, user="u", password="p", retries=10
    )
    delays = list(spec.retry_policy.delays())
    assert len(delays) == 10
    assert max(delays) <= MAX_BACKOFF


# --- the ack protocol -------------------------------------------------------------------
def test_part_counter_settles_after_every_part() -> None:
    counter: PartCounter[int] = PartCounter()
    counter.add(7)
    assert not counter.done(7, 3)
    assert not counter.done(7, 3)
    assert counter.done(7, 3)
    assert 7 not in counter
    assert not counter.done(7, 3)  # unknown (settled, or from a lost connection): ignored


@pytest.mark.parametrize(
    "body", [{"ack": "junk"}, {"ack": {"reply_to": 5}}, {"ack": None, "parts": "two"}]
)
def test_malformed_settlements_owe_nothing(body: dict[str, Any]) -> None:
    assert Settlement.of(body) == Settlement(None, 1)
    assert settle_failed(Envelope("x", body)) is None


def test_a_failed_message_is_settled_with_its_own_parts() -> None:
    done = settle_failed(Envelope("trigger", {**owed(4).split(3).fields(), "junk": 1}))
    assert done is not None
    assert done.kind == DONE_KIND
    assert done.body == {"ack": {"reply_to": "inproc://owner", "tag": 4}, "parts": 3}


# --- the stage ----------------------------------------------------------------------------
class Pooled(Stage):
    """Each message's work runs on the pool for ``delay`` seconds; results go on as they end."""

    def on_message(self, envelope: Envelope) -> None:
        self.submit(self.work_on, envelope)

    def work_on(self, envelope: Envelope) -> Envelope:
        if envelope.body.get("fail"):
            raise OSError("disk on fire")
        time.sleep(float(envelope.body["delay"]))
        return Envelope("done", {"n": envelope.body["n"]})


def test_start_returns_with_the_inbox_bound(ends: Wire, stages: list[Worker]) -> None:
    stage = Relay("bound", threading.Event(), lambda e: e, inbox=ends.inbox, outbox=ends.outbox)
    stage.start()
    stages.append(stage)
    assert stage.ready.is_set()
    # No wait: a send that finds no bound reader would fail at once (not blocking).
    with ends.sender() as sender:
        assert sender.send(Envelope("n", {"seq": 1}), block=False)
    assert [e.body for e in ends.receive(1)] == [{"seq": 1}]


def test_start_fails_when_the_inbox_is_taken(ends: Wire, stages: list[Worker]) -> None:
    first = Relay("first", threading.Event(), lambda e: e, inbox=ends.inbox)
    first.start()
    stages.append(first)
    second = Relay("second", threading.Event(), lambda e: e, inbox=ends.inbox)
    with pytest.raises(WorkerStartError, match="second"):
        second.start()
    assert not second.is_alive()


def test_pool_results_go_on_as_each_finishes(ends: Wire, stages: list[Worker]) -> None:
    stage = Pooled("pooled", threading.Event(), inbox=ends.inbox, outbox=ends.outbox, workers=4)
    stage.start()
    stages.append(stage)
    with ends.sender() as sender:
        sender.send(Envelope("work", {"n": "slow", "delay": 1.0}))
        sender.send(Envelope("work", {"n": "fast", "delay": 0.0}))
        first = ends.receive(1, timeout=0.8)
        rest = ends.receive(1, timeout=5)
    # The fast one did not wait for the slow one, nor for any poll of the stage's.
    assert [e.body["n"] for e in first] == ["fast"]
    assert [e.body["n"] for e in rest] == ["slow"]


class Prestarted(Pooled):
    prestart_pool = True


def test_a_prestarted_pool_has_every_thread_running_before_work_comes(
    ends: Wire, stages: list[Worker]
) -> None:
    def pool_threads(stage: str) -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith(f"{stage}-pool"))

    lazy = Pooled("lazy", threading.Event(), inbox="inproc://lazy-pool-test", workers=6)
    lazy.start()
    stages.append(lazy)
    eager = Prestarted("eager", threading.Event(), inbox=ends.inbox, outbox=ends.outbox, workers=6)
    eager.start()
    stages.append(eager)
    assert wait_until(lambda: pool_threads("eager") == 6, 5)
    assert pool_threads("lazy") == 0
    # Prestarted threads take work as any others do.
    with ends.sender() as sender:
        sender.send(Envelope("work", {"n": 1, "delay": 0}))
        assert [e.body["n"] for e in ends.receive(1)] == [1]


def test_failing_pool_work_is_counted_and_the_next_flows(ends: Wire, stages: list[Worker]) -> None:
    stage = Pooled("failing", threading.Event(), inbox=ends.inbox, outbox=ends.outbox, workers=2)
    stage.start()
    stages.append(stage)
    before = sample("chain_messages_rejected_total", stage="failing", reason="OSError")
    with ends.sender() as sender:
        sender.send(Envelope("work", {"n": "bad", "fail": True, "delay": 0}))
        assert wait_until(
            lambda: (
                sample("chain_messages_rejected_total", stage="failing", reason="OSError")
                == before + 1
            ),
            5,
        )
        sender.send(Envelope("work", {"n": "good", "delay": 0}))
        assert [e.body["n"] for e in ends.receive(1)] == ["good"]


def test_stop_waits_for_pool_work_within_the_bound(ends: Wire) -> None:
    stage = Pooled(
        "stopping",
        threading.Event(),
        inbox=ends.inbox,
        outbox=ends.outbox,
        workers=2,
        stop_timeout=3.0,
    )
    stage.start()
    with ends.sender() as sender:
        sender.send(Envelope("work", {"n": 1, "delay": 0.5}))
        assert wait_until(lambda: stage.pending_work == 1, 5)
    assert stage.stop_and_join(5)
    assert [e.body["n"] for e in ends.receive(1, timeout=1)] == [1]


class Timed(Stage):
    """Sends on a mark from timers and from other threads."""

    def on_message(self, envelope: Envelope) -> None:
        if envelope.kind == "later":
            self.call_later(float(envelope.body["delay"]), lambda: self.send(envelope))
        elif envelope.kind == "cancel":
            self.call_later(0.05, lambda: self.send(envelope)).cancel()
        else:
            threading.Thread(target=self.emit, args=(envelope,)).start()


def test_timers_run_in_time_order_and_cancelled_ones_never(
    ends: Wire, stages: list[Worker]
) -> None:
    stage = Timed("timed", threading.Event(), inbox=ends.inbox, outbox=ends.outbox)
    stage.start()
    stages.append(stage)
    with ends.sender() as sender:
        sender.send(Envelope("later", {"delay": 0.3, "n": 2}))
        sender.send(Envelope("cancel", {"n": 0}))
        sender.send(Envelope("later", {"delay": 0.1, "n": 1}))
        sender.send(Envelope("other-thread", {"n": 3}))
        received = ends.receive(4, timeout=2)
    assert sorted(e.body["n"] for e in received) == [1, 2, 3]
    assert [e.body["n"] for e in received if e.kind == "later"] == [1, 2]


def test_calls_from_many_threads_each_wake_the_loop(stages: list[Worker]) -> None:
    # Wake-ups are coalesced (one byte in the pipe per turn of the loop); a call queued
    # while the loop empties the pipe must still run at once, not at the next timer.
    stage = Stage("woken", threading.Event())
    stage.start()
    stages.append(stage)
    ran: list[int] = []
    lock = threading.Lock()

    def record(n: int) -> None:
        with lock:
            ran.append(n)

    def caller(base: int, count: int) -> None:
        for n in range(count):
            stage.call_soon_threadsafe(functools.partial(record, base + n))
            if n % 7 == 0:
                time.sleep(0)  # let the loop run between some calls

    def all_ran(expected: int) -> bool:
        return len(ran) == expected

    for round_ in range(200):
        expected = len(ran) + 4 * 5
        threads = [
            threading.Thread(target=caller, args=(round_ * 100 + 10 * t, 5)) for t in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The loop has no timer and no inbox traffic: only a wake-up runs these.
        assert wait_until(functools.partial(all_ran, expected), 2, step=0.001), (
            f"round {round_}: {len(ran)} of {expected} calls ran"
        )


def test_twenty_failing_messages_are_settled_and_the_next_flows(
    ends: Wire, stages: list[Worker]
) -> None:
    def handler(envelope: Envelope) -> Envelope:
        if envelope.body.get("bad"):
            raise KeyError("no such field")
        return envelope

    stage = Relay("settling", threading.Event(), handler, inbox=ends.inbox, outbox=ends.outbox)
    stage.start()
    stages.append(stage)
    before = sample("chain_messages_rejected_total", stage="settling", reason="KeyError")
    with ends.sender() as sender:
        for tag in range(20):
            sender.send(Envelope("trigger", {"bad": True, **owed(tag).fields()}))
        sender.send(Envelope("trigger", {"good": True, **owed(99).fields()}))
        received = ends.receive(21)
    dones = [e for e in received if e.kind == DONE_KIND]
    assert sorted(e.body["ack"]["tag"] for e in dones) == list(range(20))
    assert [e.body["good"] for e in received if e.kind == "trigger"] == [True]
    after = sample("chain_messages_rejected_total", stage="settling", reason="KeyError")
    assert after == before + 20


class Gated(Relay):
    """Takes nothing from its inbox while paused."""

    def on_message(self, envelope: Envelope) -> None:
        if envelope.kind == "pause":
            self.pause_inbox()
            self.call_later(float(envelope.body["for"]), lambda: self.pause_inbox(False))
        super().on_message(envelope)


def test_a_paused_inbox_holds_messages_until_resumed(ends: Wire, stages: list[Worker]) -> None:
    stage = Gated("gated", threading.Event(), lambda e: e, inbox=ends.inbox, outbox=ends.outbox)
    stage.start()
    stages.append(stage)
    with ends.sender() as sender:
        sender.send(Envelope("pause", {"for": 0.6}))
        assert [e.kind for e in ends.receive(1)] == ["pause"]
        sender.send(Envelope("after", {}))
        assert ends.receive(1, timeout=0.3) == []
        assert [e.kind for e in ends.receive(1, timeout=3)] == ["after"]


# --- the chain ----------------------------------------------------------------------------
class Named(Relay):
    stop_weight = 2.0


def test_chain_wires_addresses_outboxes_and_shutdown_shares() -> None:
    stop = threading.Event()
    ingest = [Relay("a", stop, lambda e: e), Relay("b", stop, lambda e: e)]
    middle, last = Named("m", stop, lambda e: e), Relay("z", stop, lambda e: e)
    chain = Chain("test", [ingest, middle, last], shutdown_timeout=10.0)
    assert [stage.inbox for stage in chain.stages] == [
        "inproc://test/a",
        "inproc://test/b",
        "inproc://test/m",
        "inproc://test/z",
    ]
    assert [stage.outbox for stage in chain.stages] == [
        "inproc://test/m",
        "inproc://test/m",
        "inproc://test/z",
        None,
    ]
    shares = chain.share_shutdown()
    assert sum(shares.values()) == pytest.approx(10.0 * STOP_SHARE)
    assert shares["m"] == pytest.approx(2 * shares["a"])
    assert middle.stop_timeout == shares["m"]


def test_only_the_head_of_a_chain_may_be_a_tier() -> None:
    stop = threading.Event()
    with pytest.raises(ValueError, match="only the first"):
        Chain(
            "bad",
            [
                Relay("a", stop, lambda e: e),
                [Relay("b", stop, lambda e: e), Relay("c", stop, lambda e: e)],
            ],
            shutdown_timeout=1,
        )


def test_chain_passes_messages_end_to_end_and_stops_from_the_head(ends: Wire) -> None:
    stop = threading.Event()
    order: list[str] = []

    class Recorded(Relay):
        def stop_and_join(self, timeout: float) -> bool:
            order.append(self.name)
            return super().stop_and_join(timeout)

    def tag(name: str) -> Any:
        return lambda e: Envelope(e.kind, {**e.body, "path": [*e.body.get("path", []), name]})

    first, second = Recorded("first", stop, tag("first")), Recorded("second", stop, tag("second"))
    sink = Recorded("sink", stop, lambda e: e)
    chain = Chain("e2e", [first, second, sink], shutdown_timeout=5.0)
    sink.outbox = ends.outbox  # the chain's last stage sends nowhere; the test listens there
    chain.start()
    try:
        sender = Sender(first.inbox, linger=0)
        try:
            for seq in range(100):
                sender.send(Envelope("n", {"seq": seq}))
        finally:
            sender.close()
        received = ends.receive(100)
    finally:
        assert chain.stop_and_join(10)
    assert [e.body["seq"] for e in received] == list(range(100))
    assert {tuple(e.body["path"]) for e in received} == {("first", "second")}
    assert order == ["first", "second", "sink"]


def test_a_chain_that_cannot_start_stops_what_it_started(ends: Wire) -> None:
    stop = threading.Event()
    blocker = Relay("blocker", stop, lambda e: e, inbox="inproc://taken/head")
    blocker.start()
    try:
        tail = Relay("tail", stop, lambda e: e)
        head = Relay("head", stop, lambda e: e)
        chain = Chain("taken", [head, tail], shutdown_timeout=2.0)
        with pytest.raises(WorkerStartError):
            chain.start()
        assert not tail.is_alive()
    finally:
        assert blocker.stop_and_join(5)


# --- group commit, prefetch -----------------------------------------------------------------
def test_outbox_stores_a_group_in_one_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_entries=5) as outbox:
        ids = outbox.append_many([("x", "k", b"%d" % n, {"n": str(n)}) for n in range(3)])
        assert ids == sorted(ids)
        assert len(outbox) == 3
        with pytest.raises(OutboxFullError):
            outbox.append_many([("x", "k", b"more", None)] * 3)
        assert len(outbox) == 3  # all or nothing
        with pytest.raises(TypeError):
            outbox.append_many([("x", "k", b"ok", None), ("x", "k", object(), None)])  # type: ignore[list-item]
        assert [e.body for e in outbox.peek()] == [b"0", b"1", b"2"]
        outbox.remove_many(ids[:2])
        assert [e.body for e in outbox.peek()] == [b"2"]
        assert outbox.room == 4


def test_outbox_group_commit_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as outbox:
        outbox.append_many([("x", "k", b"a", None), ("x", "k", b"b", None)])
        # synchronous=FULL: the commit is on disk before append_many returns.
        (level,) = outbox._connection().execute("PRAGMA synchronous").fetchone()
        assert level == 2
    with Outbox(path) as reopened:
        assert [e.body for e in reopened.peek()] == [b"a", b"b"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 8),
        ({f"OUTPUT_{n}_LOCATION": f"Cam {n}" for n in range(1, 33)}, 160),
        ({"OUTPUT_1_LOCATION": "Cam", "CAMERA_QUEUE": "6", "OUTPUT_2_LOCATION": "B"}, 16),
        ({"OUTPUT_1_LOCATION": "Cam", "RABBITMQ_PREFETCH": "3"}, 3),
    ],
)
def test_prefetch_lets_every_camera_be_in_flight(
    tmp_path: Path, env: dict[str, str], expected: int
) -> None:
    cameras = {
        key.replace("_LOCATION", "_TYPE"): "camera" for key in env if key.endswith("_LOCATION")
    }
    settings = config.load(env={"SECRETS_DIR": str(tmp_path), **env, **cameras})
    assert settings.prefetch == expected


def test_an_owner_in_this_process_takes_its_acks_by_a_direct_call(ends: Wire) -> None:
    taken: list[tuple[dict[str, Any], str]] = []
    address = "inproc://direct-owner"
    replies = Replies()
    take_acks_directly(address, lambda body: taken.append((body, threading.current_thread().name)))
    try:
        settlement = Settlement(ack_token(address, tag=7)).split(2)
        assert replies.send(settlement)
        assert replies.send(settlement, requeue=True)
    finally:
        stop_taking_acks_directly(address)
        replies.close()
    assert [body["tag"] for body, _ in taken] == [7, 7]
    assert [body["parts"] for body, _ in taken] == [2, 2]
    assert [body["requeue"] for body, _ in taken] == [False, True]
    assert {name for _, name in taken} == {threading.current_thread().name}
    # Once it stops taking them so, acks go to its inbox as messages again.
    replies = Replies()
    try:
        assert replies.send(Settlement(ack_token(ends.outbox, tag=8)))
        [message] = ends.receive(1)
    finally:
        replies.close()
    assert message.body["tag"] == 8


def test_a_folded_relay_runs_on_the_stage_before_it_and_settles_what_it_fails_on(
    ends: Wire,
) -> None:
    stop = threading.Event()
    threads: set[str] = set()

    def build(envelope: Envelope) -> Envelope:
        threads.add(threading.current_thread().name)
        if envelope.body.get("bad"):
            raise ValueError("a message it cannot build")
        return Envelope("built", {**envelope.body, "built": True})

    head = Relay("head", stop, lambda e: e)
    middle = Relay("middle", stop, build, fold=True)
    sink = Relay("sink", stop, lambda e: e)
    chain = Chain("fold", [head, middle, sink], shutdown_timeout=5.0)
    assert [stage.name for stage in chain.stages] == ["head", "sink"]
    assert chain.stage("middle") is middle
    assert head.outbox == sink.inbox
    sink.outbox = ends.outbox
    chain.start()
    try:
        sender = Sender(head.inbox, linger=0)
        try:
            sender.send(Envelope("n", {"seq": 1}))
            sender.send(
                Envelope("n", {"seq": 2, "bad": True, "ack": ack_token("inproc://x", tag=2)})
            )
            sender.send(Envelope("n", {"seq": 3}))
        finally:
            sender.close()
        received = ends.receive(3)
    finally:
        assert chain.stop_and_join(10)
    assert [e.kind for e in received] == ["built", DONE_KIND, "built"]
    assert received[1].body["ack"]["tag"] == 2
    assert threads == {"head"}  # upstream: the last stage is the one all messages wait for


def test_a_relay_at_the_head_folds_into_the_stage_after_it(ends: Wire) -> None:
    stop = threading.Event()
    threads: set[str] = set()

    def build(envelope: Envelope) -> Envelope:
        threads.add(threading.current_thread().name)
        return Envelope("built", envelope.body)

    first = Relay("first", stop, build, fold=True)
    sink = Relay("sink", stop, lambda e: e)
    chain = Chain("head-fold", [first, sink], shutdown_timeout=5.0)
    assert [stage.name for stage in chain.stages] == ["sink"]
    sink.outbox = ends.outbox
    chain.start()
    try:
        sender = Sender(sink.inbox, linger=0)
        try:
            sender.send(Envelope("n", {"seq": 1}))
        finally:
            sender.close()
        [received] = ends.receive(1)
    finally:
        assert chain.stop_and_join(10)
    assert received.kind == "built"
    assert threads == {"sink"}


def test_an_ack_owner_takes_direct_acks_and_drops_a_malformed_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken: list[dict[str, Any]] = []
    owner = AckInbox("inproc://test-ack-owner", taken.append)
    replies = Replies()
    owner.open()
    try:
        settlement = Settlement(ack_token(owner.address, path="/x"))
        assert replies.send(settlement)  # a direct call: no socket in between
        assert taken == [{"path": "/x", "reply_to": owner.address, "parts": 1, "requeue": False}]
    finally:
        owner.close()
        replies.close()
    before = sample("chain_acks_undelivered_total", reason="malformed")
    owner.take([b"not an envelope"])
    assert len(taken) == 1
    assert sample("chain_acks_undelivered_total", reason="malformed") == before + 1
    assert "dropped a malformed ack" in caplog.text
    owner.take(Envelope("amqp.ack", {"reply_to": owner.address, "path": "/y"}).frames())
    assert taken[-1]["path"] == "/y"
