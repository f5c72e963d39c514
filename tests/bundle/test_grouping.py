"""Which sensor event a trigger belongs to: one bundle per event, named for its folder."""

from __future__ import annotations

from snapshot_processor.bundle.grouping import BundleGrouping, BundleRef, event_key

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# 2026-12-07 20:01:02 UTC
EPOCH = 1796673662.0


def bundle(grouping: BundleGrouping, sensor: str | None, trace: str | None, now: float) -> str:
    ref = grouping.bundle_for(sensor, trace, now, received=EPOCH + now, camera="Yard camera")
    return ref.bundle_id


def test_one_sensors_triggers_within_the_window_share_a_bundle() -> None:
    bundles = BundleGrouping(window=5.0)
    first = bundle(bundles, "hall pir", None, now=100.0)
    assert bundle(bundles, "Hall PIR ", None, now=104.9) == first  # any case, spaces
    assert bundle(bundles, "yard pir", None, now=101.0) != first
    later = bundle(bundles, "hall pir", None, now=105.1)  # from the event's first trigger
    assert later != first
    assert bundle(bundles, "hall pir", None, now=106.0) == later


def test_a_trace_groups_before_the_sensor_does() -> None:
    bundles = BundleGrouping(window=5.0)
    first = bundle(bundles, "hall pir", TRACE, now=0.0)
    assert bundle(bundles, "yard pir", TRACE, now=1.0) == first
    assert bundle(bundles, "hall pir", OTHER_TRACE, now=1.0) != first
    assert event_key("hall pir", TRACE.upper()) == f"trace {TRACE.split('-')[1]}"


def test_an_invalid_trace_falls_back_to_the_sensor() -> None:
    zero = "00-" + "0" * 32 + "-00f067aa0ba902b7-01"
    for trace in ("not a trace", zero, TRACE[:-3]):
        assert event_key("hall pir", trace) == "sensor hall pir"


def test_a_trigger_that_names_no_sensor_is_a_bundle_of_its_own() -> None:
    bundles = BundleGrouping(window=5.0)
    ids = {bundle(bundles, None, None, now=0.0), bundle(bundles, "  ", None, now=0.0)}
    assert len(ids) == 2
    assert all(len(found) == 32 for found in ids)


def test_a_window_of_zero_bundles_only_triggers_of_the_same_moment() -> None:
    bundles = BundleGrouping(window=0.0)
    first = bundle(bundles, "hall pir", None, now=7.0)
    assert bundle(bundles, "hall pir", None, now=7.0) == first
    assert bundle(bundles, "hall pir", None, now=7.5) != first


def test_a_completed_bundle_takes_no_more_triggers() -> None:
    bundles = BundleGrouping(window=5.0)
    first = bundle(bundles, "hall pir", None, now=0.0)
    bundles.closed(first)
    later = bundle(bundles, "hall pir", None, now=1.0)
    assert later != first
    assert bundle(bundles, "hall pir", None, now=2.0) == later


def test_a_bundle_is_named_for_its_day_time_and_sensor() -> None:
    ref = BundleRef.new(EPOCH, "Hall PIR/1", "Yard camera")
    day, _, name = ref.group.rpartition("/")
    assert day == "2026/12/07"
    assert name == f"20261207T200102Z_hall-pir-1_{ref.bundle_id[:8]}"
    # Without a sensor, the camera that was triggered names it.
    assert "_yard-camera_" in BundleRef.new(EPOCH, None, "Yard camera").group
