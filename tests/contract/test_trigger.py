"""Twenty kinds of malformed trigger: each is named, counted and acked; the next good one flows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from pylib.observe.redact import redact
from snapshot_processor.contract.trigger import Trigger, TriggerError, parse_trigger
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, foscam_env, make_settings
from tests.support.metrics import sample
from tools.camera_simulator import CameraSimulator

CAMERAS = {"front door camera": "Front Door camera"}


def packed(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def with_output(**changes: Any) -> bytes:
    body = trigger_body("Front Door camera", device_params=f"admin:{PASSWORD}@127.0.0.1:88")
    body["output_triggered"].update(changes)
    for key in [key for key, value in changes.items() if value is ...]:
        del body["output_triggered"][key]
    return packed(body)


def with_top(**changes: Any) -> bytes:
    body = trigger_body("Front Door camera")
    body.update(changes)
    for key in [key for key, value in changes.items() if value is ...]:
        del body[key]
    return packed(body)


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty body": (b"", "not_msgpack"),
    "not msgpack": (b"\xc1\xc1\xc1", "not_msgpack"),
    "truncated msgpack": (packed(trigger_body("Front Door camera"))[:-5], "not_msgpack"),
    "json text": (b'{"timestamp": 1}', "not_msgpack"),
    "a list": (packed([1, 2, 3]), "not_a_map"),
    "a string": (packed("trigger"), "not_a_map"),
    "nil": (packed(None), "not_a_map"),
    "no timestamp": (with_top(timestamp=...), "missing_field"),
    "timestamp a string": (with_top(timestamp="yesterday"), "bad_field"),
    "timestamp a bool": (with_top(timestamp=True), "bad_field"),
    "negative timestamp": (with_top(timestamp=-5), "bad_field"),
    "no output_triggered": (with_top(output_triggered=...), "missing_field"),
    "output_triggered a string": (with_top(output_triggered="cam"), "bad_field"),
    "no device_key": (with_output(device_key=...), "missing_field"),
    "device_key an int": (with_output(device_key=7), "bad_field"),
    "unknown camera": (with_output(device_key="attic camera"), "unknown_camera"),
    "device_params a map": (with_output(device_params={"host": "x"}), "bad_field"),
    "device disabled": (with_output(device_enabled=False), "disabled"),
    "too large": (packed({"timestamp": 1, "pad": "x" * 1_100_000}), "too_large"),
    "timestamp not ISO-8601": (with_top(timestamp="2024-13-45T99:00:00Z"), "bad_field"),
    "timestamp NaN": (with_top(timestamp=float("nan")), "bad_field"),
    "timestamp past 9999": (with_top(timestamp=1e300), "bad_field"),
    "timestamp past 64 bits": (with_top(timestamp=2**64 - 1), "bad_field"),
    "timestamp before 1970": (with_top(timestamp="1969-12-31T23:59:59Z"), "bad_field"),
    "a map as a map key": (
        b"\x82\xa9timestamp\x01\x81\x01\x02\x03",  # {"timestamp": 1, {1: 2}: 3}
        "bad_map_key",
    ),
    "a list as a map key": (b"\x81\x92\x01\x02\x03", "bad_map_key"),  # {[1, 2]: 3}
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_trigger_is_named(case: str) -> None:
    body, reason = MALFORMED[case]
    with pytest.raises(TriggerError) as caught:
        parse_trigger(body, CAMERAS)
    assert caught.value.reason == reason
    assert PASSWORD not in str(caught.value)


def test_good_trigger_parses_with_key_in_any_case() -> None:
    body = trigger_body("FRONT DOOR camera", timestamp=1700000000, device_params="a:b@c:1")
    trigger = parse_trigger(packed(body), CAMERAS)
    assert trigger == Trigger(
        camera_key="Front Door camera",
        device_label="Front Door",
        timestamp=1700000000,
        device_params="a:b@c:1",
        trigger_topic="snapshot",
        sensor_key="hall pir",
    )


def test_the_sensor_and_the_trace_are_read_when_they_are_there() -> None:
    body = trigger_body("Front Door camera")
    body["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trigger = parse_trigger(packed(body), CAMERAS)
    assert (trigger.sensor_key, trigger.traceparent) == ("hall pir", body["traceparent"])
    for odd in (None, "a string", {"device_key": 7}, {"device_key": "x" * 5000}):
        body = trigger_body("Front Door camera")
        body.pop("traceparent", None)
        body["active_input"] = odd
        parsed = parse_trigger(packed(body), CAMERAS)
        assert parsed.traceparent is None
        assert parsed.sensor_key in (None, "x" * 256)


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


@pytest.mark.broker
def test_malformed_triggers_then_good_one_over_the_broker(
    tmp_path: Path, camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    exchange = unique_exchange()
    settings = make_settings(tmp_path, exchange, **foscam_env())
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            before = {
                reason: sample(
                    "amqp_messages_rejected_total", queue=settings.queue_name, reason=reason
                )
                for _, reason in MALFORMED.values()
            }
            for body, _ in MALFORMED.values():
                peer.send_raw(body)
            peer.send_trigger(
                trigger_body(
                    "Front Door camera", device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
                )
            )
            images = peer.wait_for_images(1)
            listener = next(w for w in app.workers if w.name == "listener")
            assert listener.is_alive()
    finally:
        peer.close()
    assert len(images) == 1
    expected: dict[str, int] = {}
    for _, reason in MALFORMED.values():
        expected[reason] = expected.get(reason, 0) + 1
    for reason, count in expected.items():
        assert (
            sample("amqp_messages_rejected_total", queue=settings.queue_name, reason=reason)
            - before[reason]
            == count
        )
    rejected_lines = [r for r in caplog.records if "rejected message" in r.getMessage()]
    assert len(rejected_lines) == len(MALFORMED)
    assert PASSWORD not in caplog.text


def test_device_params_password_is_masked_once_parsed() -> None:
    body = trigger_body("Front Door camera", device_params="admin:two words@pw@10.0.0.5:88")
    parse_trigger(packed(body), CAMERAS)
    assert "two words@pw" not in redact(f"failed with {body['output_triggered']}")
