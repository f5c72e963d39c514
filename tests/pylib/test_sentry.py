"""Sentry events reach a loopback receiver with every credential removed."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Iterator

import pika
import pytest
import sentry_sdk

from pylib.amqp.params import connection_parameters
from pylib.observe.logs import setup_logging
from pylib.observe.sentry import capture_exception, close_sentry, flush_sentry, init_sentry
from tests.support.fakes.sentry import SentryReceiver

PASSWORD = "hunter2pw"
CAMERA_URL = (
    f"http://admin:{PASSWORD}@10.0.0.5:88/cgi-bin/CGIProxy.fcgi"
    f"?cmd=snapPicture2&usr=admin&pwd={PASSWORD}"
)


class CameraFetchError(RuntimeError):
    """Stands in for the application's camera error."""


@pytest.fixture
def receiver() -> Iterator[SentryReceiver]:
    with SentryReceiver() as server:
        yield server


@pytest.fixture
def sentry_off() -> Iterator[None]:
    """Switch Sentry off after the test, so no SDK thread or socket outlives it."""
    yield
    close_sentry()


def _fetch_snapshot(url: str) -> None:
    # A local variable holding the URL, as real code has: Sentry sends frame variables.
    camera_address = f"admin:{PASSWORD}@10.0.0.5:88"
    raise CameraFetchError(f"snapshot from {url} failed ({camera_address}): HTTP 500")


@pytest.mark.usefixtures("sentry_off")
def test_exception_arrives_without_the_password(
    receiver: SentryReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert init_sentry(receiver.dsn, release="test-1", environment="test") is True
    assert not sentry_sdk.get_client().should_send_default_pii()
    # INFO log lines become breadcrumbs of the next event.
    caplog.set_level(logging.INFO, logger="camera")
    logging.getLogger("camera").info("fetching %s", CAMERA_URL)
    try:
        _fetch_snapshot(CAMERA_URL)
    except CameraFetchError as exc:
        capture_exception(exc, camera="front door")
    flush_sentry()

    [event] = receiver.wait_for_events(1)
    [exception] = event["exception"]["values"]
    assert exception["type"] == "CameraFetchError"
    assert "snapshot from http://admin:" in exception["value"]
    assert event["tags"]["camera"] == "front door"
    assert event["release"] == "test-1"
    assert event["environment"] == "test"
    frames = exception["stacktrace"]["frames"]
    assert not any(frame.get("vars") for frame in frames)  # frame locals stay home
    assert any("fetching" in json.dumps(crumb) for crumb in event["breadcrumbs"]["values"])
    for body in receiver.bodies:
        assert PASSWORD.encode() not in body
    assert PASSWORD not in json.dumps(event)


@pytest.mark.usefixtures("sentry_off")
def test_error_log_arrives_without_the_password(receiver: SentryReceiver) -> None:
    assert init_sentry(receiver.dsn)
    logging.getLogger("camera").error("camera %s gave no image", CAMERA_URL)
    flush_sentry()

    [event] = receiver.wait_for_events(1)
    # A redacting log filter may have formatted the message already; either shape is fine.
    assert "gave no image" in event["logentry"]["message"]
    for body in receiver.bodies:
        assert PASSWORD.encode() not in body


@pytest.mark.usefixtures("sentry_off")
def test_no_dsn_sends_nothing(receiver: SentryReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK would read SENTRY_DSN when given none; init_sentry must not ask it at all.
    monkeypatch.setenv("SENTRY_DSN", receiver.dsn)
    assert init_sentry(None) is False
    assert init_sentry("") is False
    assert not sentry_sdk.is_initialized()
    capture_exception(CameraFetchError("not sent"))
    flush_sentry()
    time.sleep(0.2)
    assert receiver.bodies == []


def test_close_switches_sentry_off(receiver: SentryReceiver) -> None:
    assert init_sentry(receiver.dsn)
    capture_exception(CameraFetchError("before close"))
    close_sentry()
    assert not sentry_sdk.is_initialized()
    assert len(receiver.wait_for_events(1)) == 1
    capture_exception(CameraFetchError("after close"))
    time.sleep(0.2)
    assert len(receiver.events) == 1
    close_sentry()  # a second close is harmless


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.usefixtures("sentry_off")
def test_pika_log_lines_never_become_events(receiver: SentryReceiver) -> None:
    # At DEBUG pika's errors reach the log (at INFO they are kept out): never Sentry.
    setup_logging(logging.DEBUG, stream=io.StringIO())
    assert init_sentry(receiver.dsn)
    params = connection_parameters(None, f"127.0.0.1:{_closed_port()}", connection_name="test")
    pika_lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name.startswith("pika") and record.levelno >= logging.ERROR:
                pika_lines.append(record)

    keep = Keep()
    logging.getLogger("pika").addHandler(keep)
    try:
        for _ in range(5):
            with pytest.raises(pika.exceptions.AMQPConnectionError):
                pika.BlockingConnection(params)
    finally:
        logging.getLogger("pika").removeHandler(keep)
    logging.getLogger("ours").error("broker unreachable")  # proof that events do arrive
    flush_sentry()

    assert len(pika_lines) >= 5  # pika did log its errors
    [event] = receiver.wait_for_events(1)
    assert event["logger"] == "ours"
    time.sleep(0.2)
    assert len(receiver.events) == 1


@pytest.mark.usefixtures("sentry_off")
def test_one_event_per_kind_of_trouble_per_interval(receiver: SentryReceiver) -> None:
    setup_logging(logging.INFO, stream=io.StringIO())
    assert init_sentry(receiver.dsn, repeat_interval=1.0)
    log = logging.getLogger("camera")
    started = time.monotonic()
    for number in range(30):
        log.error("trigger %d rejected: %s", number, "bad field")
        try:
            _fetch_snapshot(CAMERA_URL)
        except CameraFetchError as exc:
            capture_exception(exc)
    log.error("another kind of trouble")
    flush_sentry()
    if time.monotonic() - started >= 1.0:
        pytest.skip("the machine was too slow to fit the loop in one interval")
    events = receiver.wait_for_events(3)
    time.sleep(0.2)
    assert len(receiver.events) == 3
    assert sorted(e.get("logentry", {}).get("message", "exception") for e in events) == [
        "another kind of trouble",
        "exception",
        "trigger 0 rejected: bad field",
    ]

    time.sleep(1.0)  # the interval has passed: the next one goes, saying what was held back
    log.error("trigger %d rejected: %s", 99, "bad field")
    flush_sentry()
    [*_, last] = receiver.wait_for_events(4)
    assert last["logentry"]["message"] == "trigger 99 rejected: bad field"
    assert last["extra"]["held_back_since_last"] == 29
    for body in receiver.bodies:
        assert PASSWORD.encode() not in body


def test_the_repeat_limit_forgets_quiet_kinds_so_it_stays_bounded() -> None:
    from pylib.observe.sentry import MAX_KINDS, _RepeatLimit

    limit = _RepeatLimit(interval=0.0)  # every kind is quiet at once
    for n in range(3 * MAX_KINDS):
        assert limit.admit(f"kind {n}") == 0
    assert len(limit) <= MAX_KINDS
    busy = _RepeatLimit(interval=3600.0)
    assert busy.admit("same") == 0
    assert busy.admit("same") is None  # held back within the interval
    assert busy.admit("same") is None
