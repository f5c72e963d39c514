"""The cost guard, on a clock the test moves."""

from __future__ import annotations

from snapshot_processor import config
from snapshot_processor.detection.guard import CostGuard
from snapshot_processor.detection.registry import make_guard
from tests.support.wait import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_same_bytes_within_the_window_are_a_duplicate() -> None:
    clock = Clock()
    guard = CostGuard(dedupe_window=60, clock=clock)
    assert guard.check(b"one") is None
    assert guard.check(b"two") is None
    clock.now += 59.9
    assert guard.check(b"one") == "duplicate"
    clock.now += 0.1  # 60 s after the first send
    assert guard.check(b"one") is None


def test_a_duplicate_does_not_extend_the_window() -> None:
    clock = Clock()
    guard = CostGuard(dedupe_window=10, clock=clock)
    assert guard.check(b"img") is None
    clock.now += 9
    assert guard.check(b"img") == "duplicate"
    clock.now += 1
    assert guard.check(b"img") is None


def test_hourly_cap_rolls() -> None:
    clock = Clock()
    guard = CostGuard(dedupe_window=0, max_per_hour=3, clock=clock)
    assert [guard.check(b"x") for _ in range(4)] == [None, None, None, "hourly_cap"]
    clock.now += 3599
    assert guard.check(b"x") == "hourly_cap"
    clock.now += 1
    assert guard.check(b"x") is None


def test_daily_cap_and_refused_calls_are_not_counted() -> None:
    clock = Clock()
    guard = CostGuard(dedupe_window=60, max_per_hour=2, max_per_day=3, clock=clock)
    assert guard.check(b"a") is None
    assert guard.check(b"a") == "duplicate"  # refused: neither recorded nor counted
    assert guard.check(b"b") is None
    assert guard.check(b"c") == "hourly_cap"
    clock.now += 3600
    assert guard.check(b"c") is None
    assert guard.check(b"d") == "daily_cap"
    clock.now += 86400 - 3600
    assert guard.check(b"d") is None


def test_capped_image_may_go_once_the_cap_lifts() -> None:
    clock = Clock()
    guard = CostGuard(max_per_hour=1, clock=clock)
    assert guard.check(b"a") is None
    assert guard.check(b"b") == "hourly_cap"
    clock.now += 3600
    assert guard.check(b"b") is None


def test_memory_stays_bounded() -> None:
    clock = Clock()
    guard = CostGuard(dedupe_window=60, clock=clock, max_remembered=100)
    for index in range(1000):
        clock.now += 0.01
        assert guard.check(index.to_bytes(4, "big")) is None
    assert guard.remembered == 100
    clock.now += 61
    assert guard.check(b"new") is None
    assert guard.remembered == 1  # everything older than the window was pruned


def test_dedupe_window_from_the_environment_reaches_the_guard() -> None:
    # A window of 0.3 s instead of the default 60: the same image is a duplicate at
    # once, and may be sent again after the window.
    settings = config.load(env={"DETECTION_DEDUPE_SECONDS": "0.3"})
    guard = make_guard(settings.detection)
    assert guard.check(b"image") is None
    assert guard.check(b"image") == "duplicate"
    assert wait_until(lambda: guard.check(b"image") is None, timeout=5)
    # And a window of 0 turns deduplication off.
    off = make_guard(config.load(env={"DETECTION_DEDUPE_SECONDS": "0"}).detection)
    assert [off.check(b"image") for _ in range(3)] == [None, None, None]


def test_call_caps_from_the_environment_reach_the_guard() -> None:
    # Distinct images, so only the caps can refuse them.
    images = [f"image {n}".encode() for n in range(4)]
    hourly = make_guard(config.load(env={"DETECTION_MAX_PER_HOUR": "2"}).detection)
    assert [hourly.check(image) for image in images[:3]] == [None, None, "hourly_cap"]
    daily = make_guard(config.load(env={"DETECTION_MAX_PER_DAY": "3"}).detection)
    assert [daily.check(image) for image in images] == [None, None, None, "daily_cap"]
    # Unset: no cap.
    free = make_guard(config.load(env={}).detection)
    assert [free.check(f"free {n}".encode()) for n in range(50)] == [None] * 50
