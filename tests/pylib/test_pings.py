"""HealthPinger pings healthchecks.io and Cronitor (loopback recorders) and survives failures."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from pylib.runtime.pings import HealthPinger
from tests.support.fakes import Reply, Request
from tests.support.fakes.http_recorder import HTTPRecorder
from tests.support.net import free_port
from tests.support.wait import wait_until

CHECK_UUID = "5f2c8a4e-1b7d-4c3a-9e6f-0a1b2c3d4e5f"
CRONITOR_KEY = "telemetrykey123/snapshot-processor"


@pytest.fixture
def recorder() -> Iterator[HTTPRecorder]:
    with HTTPRecorder() as server:
        yield server


def _failures(target: str) -> float:
    return REGISTRY.get_sample_value("health_ping_failures_total", {"target": target}) or 0.0


def _healthy() -> tuple[bool, str]:
    return True, "all threads alive"


def _pinger(
    recorder: HTTPRecorder,
    is_healthy: Callable[[], tuple[bool, str]] = _healthy,
    interval: float = 60.0,
) -> HealthPinger:
    return HealthPinger(
        f"{recorder.base_url}/{CHECK_UUID}",
        CRONITOR_KEY,
        is_healthy=is_healthy,
        interval=interval,
        timeout=2.0,
        cronitor_base_url=f"{recorder.base_url}/p",
    )


def test_healthy_ping_reaches_both_services(recorder: HTTPRecorder) -> None:
    pinger = _pinger(recorder)
    try:
        pinger.ping_once()
    finally:
        pinger.stop()
    hc, cronitor = recorder.wait_for(2)
    assert (hc.method, hc.path, hc.body) == ("POST", f"/{CHECK_UUID}", b"all threads alive")
    assert (cronitor.method, cronitor.path) == ("GET", f"/p/{CRONITOR_KEY}")
    assert cronitor.param("state") == "complete"


def test_unhealthy_ping_goes_to_fail_with_redacted_reason(recorder: HTTPRecorder) -> None:
    def unhealthy() -> tuple[bool, str]:
        return False, "rabbitmq unreachable at amqp://guest:s3cretpw@rabbit:5672/"

    pinger = _pinger(recorder, is_healthy=unhealthy)
    try:
        pinger.ping_once()
    finally:
        pinger.stop()
    hc, cronitor = recorder.wait_for(2)
    assert (hc.method, hc.path) == ("POST", f"/{CHECK_UUID}/fail")
    assert b"rabbitmq unreachable" in hc.body
    assert cronitor.param("state") == "fail"
    message = cronitor.param("message") or ""
    assert "rabbitmq unreachable" in message
    assert b"s3cretpw" not in hc.body
    assert "s3cretpw" not in message


def test_health_check_that_raises_is_reported_as_failure(recorder: HTTPRecorder) -> None:
    def broken() -> tuple[bool, str]:
        raise ValueError("no state yet")

    pinger = _pinger(recorder, is_healthy=broken)
    try:
        pinger.ping_once()
    finally:
        pinger.stop()
    hc, cronitor = recorder.wait_for(2)
    assert hc.path.endswith("/fail")
    assert b"ValueError" in hc.body
    assert cronitor.param("state") == "fail"


def test_thread_pings_at_start_then_every_interval(recorder: HTTPRecorder) -> None:
    pinger = HealthPinger(
        f"{recorder.base_url}/{CHECK_UUID}", None, is_healthy=_healthy, interval=0.05
    )
    pinger.start()
    try:
        assert any(t.name == "health" for t in threading.enumerate())
        requests = recorder.wait_for(3)
    finally:
        pinger.stop()
    assert all(r.path == f"/{CHECK_UUID}" for r in requests)
    assert not any(t.name == "health" for t in threading.enumerate())


def test_stop_is_prompt_between_pings(recorder: HTTPRecorder) -> None:
    pinger = _pinger(recorder, interval=60.0)
    pinger.start()
    recorder.wait_for(2)  # the pings sent at start
    started = time.monotonic()
    assert pinger.stop() is True
    assert time.monotonic() - started < 1.0


class HangingServer(HTTPRecorder):
    """Takes each request and answers nothing until :meth:`release` (a service that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def handle(self, request: Request) -> Reply:
        reply = super().handle(request)
        self.released.wait(30)
        return reply

    def release(self) -> None:
        self.released.set()


def test_stop_is_bounded_while_a_ping_hangs() -> None:
    with HangingServer() as server:
        pinger = HealthPinger(
            f"{server.base_url}/{CHECK_UUID}",
            None,
            is_healthy=_healthy,
            timeout=30.0,  # the request itself would wait this long for an answer
        )
        pinger.start()
        try:
            server.wait_for(1)  # the first ping is in flight, and will hang
            started = time.monotonic()
            assert pinger.stop(timeout=0.3) is False
            assert time.monotonic() - started < 2.0
            assert any(t.name == "health" for t in threading.enumerate())
        finally:
            server.release()
        # Once the ping returns, the thread ends by itself; stop() as callers call it is True.
        assert wait_until(lambda: not any(t.name == "health" for t in threading.enumerate()), 10)
        assert pinger.stop() is True
    assert len(server.requests) == 1


def test_refused_ping_is_logged_counted_and_pinging_continues(
    recorder: HTTPRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.status = 500
    hc_before, cronitor_before = _failures("healthchecks"), _failures("cronitor")
    pinger = _pinger(recorder, interval=0.05)
    pinger.start()
    try:
        recorder.wait_for(4)  # two rounds: the thread survived the first
        recorder.status = 200
        seen = len(recorder.requests)
        recorder.wait_for(seen + 2)
    finally:
        pinger.stop()
    assert _failures("healthchecks") >= hc_before + 2
    assert _failures("cronitor") >= cronitor_before + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("healthchecks" in w and "HTTP 500" in w for w in warnings)
    assert any("cronitor" in w and "HTTP 500" in w for w in warnings)
    assert not any(CHECK_UUID in w or "telemetrykey123" in w for w in warnings)


def test_unreachable_service_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    hc_before, cronitor_before = _failures("healthchecks"), _failures("cronitor")
    pinger = HealthPinger(
        f"{base}/{CHECK_UUID}",
        CRONITOR_KEY,
        is_healthy=_healthy,
        timeout=1.0,
        cronitor_base_url=f"{base}/p",
    )
    try:
        pinger.ping_once()
        pinger.ping_once()
    finally:
        pinger.stop()
    assert _failures("healthchecks") == hc_before + 2
    assert _failures("cronitor") == cronitor_before + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert all("failed" in w for w in warnings)
    # requests puts the URL path in its error text; the check's key must be masked.
    assert not any(CHECK_UUID in w or "telemetrykey123" in w for w in warnings)


def test_nothing_configured_starts_nothing() -> None:
    pinger = HealthPinger(None, None, is_healthy=_healthy)
    assert not pinger.enabled
    pinger.start()
    assert not any(t.name == "health" for t in threading.enumerate())
    pinger.ping_once()
    pinger.stop()
