"""The circuit breaker's states, on a clock the test moves, and each camera's turns."""

from __future__ import annotations

import pytest

from pylib.breaker import BreakerState, CircuitBreaker
from pylib.chain.settle import Settlement, ack_token
from snapshot_processor.camera.queues import TriggerQueues
from snapshot_processor.contract.messages import TriggerMessage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read afresh each time (a bare ``breaker.state`` is narrowed by mypy after a check)."""
    return breaker.state


def test_opens_after_failures_in_a_row_only() -> None:
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(failures=3, cool_down=30, clock=Clock(), on_change=changes.append)
    assert not breaker.failed("timed out")
    assert not breaker.failed("timed out")
    breaker.succeeded()  # the count starts again
    assert breaker.failures == 0
    assert not breaker.failed("timed out")
    assert not breaker.failed("timed out")
    assert breaker.allow()
    assert breaker.failed("HTTP 500")
    assert breaker.state is BreakerState.OPEN
    assert breaker.last_error == "HTTP 500"
    assert changes == [BreakerState.OPEN]


def test_open_refuses_until_the_cool_down_then_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cool_down=30, clock=clock)
    breaker.failed("timed out")
    assert not breaker.allow()
    clock.now += 10
    assert breaker.retry_in() == pytest.approx(20)
    assert not breaker.allow()
    clock.now += 20
    assert breaker.allow()  # the probe
    assert state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.last_error == ""


def test_a_failed_probe_opens_it_for_another_cool_down() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(failures=3, cool_down=30, clock=clock, on_change=changes.append)
    for _ in range(3):
        breaker.failed("timed out")
    clock.now += 30
    assert breaker.allow()
    assert breaker.failed("connection failed")  # one failure is enough when probing
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(30)
    assert not breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN]


@pytest.mark.parametrize(
    ("options", "words"), [({"failures": 0}, "failures"), ({"cool_down": -1}, "cool_down")]
)
def test_settings_are_checked(options: dict[str, float], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        CircuitBreaker(**options)  # type: ignore[arg-type]


def trigger(key: str, tag: int) -> TriggerMessage:
    return TriggerMessage(key, key, 0, settlement=Settlement(ack_token("inproc://a", tag=tag)))


def tag(message: TriggerMessage | None) -> int | None:
    return (
        None if message is None or message.settlement.ack is None else message.settlement.ack["tag"]
    )


def test_turns_one_fetching_some_waiting_the_displaced_coalesced() -> None:
    queues = TriggerQueues(waiting=2)
    assert tag(queues.offer(trigger("a", 0)).start) == 0
    assert queues.offer(trigger("a", 1)) == queues.offer(trigger("a", 2))  # both wait
    offer = queues.offer(trigger("a", 3))
    assert offer.start is None
    assert tag(offer.coalesced) == 2  # displaced by the newer one
    assert tag(queues.offer(trigger("b", 7)).start) == 7  # another camera: its own turn
    assert queues.waiting_for("a") == 2
    assert [tag(queues.next("a")), tag(queues.next("a")), tag(queues.next("a"))] == [1, 3, None]
    assert not queues.busy("a")
    assert tag(queues.offer(trigger("a", 4)).start) == 4
    with pytest.raises(ValueError, match="waiting"):
        TriggerQueues(waiting=0)


def test_a_camera_that_answers_keeps_every_trigger_until_it_is_in_trouble() -> None:
    queues = TriggerQueues(waiting=2)
    queues.offer(trigger("a", 0))
    for n in range(1, 6):
        offer = queues.offer(trigger("a", n), trouble=False)
        assert offer.start is None
        assert offer.coalesced is None
    assert queues.waiting_for("a") == 5
    # In trouble: the oldest (waiting - 1) and the newest stay, the rest are coalesced.
    assert [tag(t) for t in queues.trim("a")] == [2, 3, 4]
    assert [tag(queues.next("a")), tag(queues.next("a")), tag(queues.next("a"))] == [1, 5, None]
