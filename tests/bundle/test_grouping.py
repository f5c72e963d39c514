"""Which sensor event a trigger belongs to: one bundle id per event."""

from __future__ import annotations

from snapshot_processor.bundle.grouping import BundleGrouping, event_key

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_one_sensors_triggers_within_the_window_share_a_bundle() -> None:
    bundles = BundleGrouping(window=5.0)
    first = bundles.bundle_for("hall pir", None, now=100.0)
    assert bundles.bundle_for("Hall PIR ", None, now=104.9) == first  # any case, spaces
    assert bundles.bundle_for("yard pir", None, now=101.0) != first
    later = bundles.bundle_for("hall pir", None, now=105.1)  # from the event's first trigger
    assert later != first
    assert bundles.bundle_for("hall pir", None, now=106.0) == later


def test_a_trace_groups_before_the_sensor_does() -> None:
    bundles = BundleGrouping(window=5.0)
    first = bundles.bundle_for("hall pir", TRACE, now=0.0)
    assert bundles.bundle_for("yard pir", TRACE, now=1.0) == first
    assert bundles.bundle_for("hall pir", OTHER_TRACE, now=1.0) != first
    assert event_key("hall pir", TRACE.upper()) == f"trace {TRACE.split('-')[1]}"


def test_an_invalid_trace_falls_back_to_the_sensor() -> None:
    zero = "00-" + "0" * 32 + "-00f067aa0ba902b7-01"
    for trace in ("not a trace", zero, TRACE[:-3]):
        assert event_key("hall pir", trace) == "sensor hall pir"


def test_a_trigger_that_names_no_sensor_is_a_bundle_of_its_own() -> None:
    bundles = BundleGrouping(window=5.0)
    ids = {bundles.bundle_for(None, None, now=0.0), bundles.bundle_for("  ", None, now=0.0)}
    assert len(ids) == 2
    assert all(len(bundle) == 32 for bundle in ids)


def test_a_window_of_zero_bundles_only_triggers_of_the_same_moment() -> None:
    bundles = BundleGrouping(window=0.0)
    first = bundles.bundle_for("hall pir", None, now=7.0)
    assert bundles.bundle_for("hall pir", None, now=7.0) == first
    assert bundles.bundle_for("hall pir", None, now=7.5) != first
