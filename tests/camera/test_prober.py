"""The camera prober against the camera simulator: up, wrong password, hang, unreachable,
recovery, one log line per change, reports from the snapshot path, and a prompt stop."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from snapshot_processor.camera.clients import make_client
from snapshot_processor.camera.errors import CameraAuthError, CameraError, CameraUnavailableError
from snapshot_processor.camera.prober import CameraProber, CameraStatus, Reason
from snapshot_processor.camera.registry import CameraRegistry
from snapshot_processor.camera.spec import CameraSpec
from snapshot_processor.config import Device
from tests.support.metrics import sample, sample_gauge
from tests.support.wait import wait_until
from tools.camera_simulator import CameraSimulator

PASSWORD = "pr0be p@ss:word"
WRONG = "n0t-the-p@ssword"
KEY = "Front Door camera"
PROBE_LOGGER = "snapshot_processor.camera.prober"


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def device(port: int, *, location: str = "Front Door", vendor: str = "foscam") -> Device:
    return Device.model_validate(
        {
            "LOCATION": location,
            "TYPE": "camera",
            "VENDOR": vendor,
            "ADDRESS": f"127.0.0.1:{port}",
            "USER": "admin",
            "PASSWORD": PASSWORD,
        }
    )


class Probing:
    """A started prober over a registry, stopped (and checked to stop) at the end."""

    def __init__(self, devices: list[Device], *, timeout: float = 1.0, interval: float = 300):
        self.registry = CameraRegistry(devices, timeout=timeout, retries=0)
        self.prober = CameraProber(
            "camera-prober", threading.Event(), cameras=self.registry, interval=interval
        )

    def __enter__(self) -> CameraProber:
        self.prober.start()
        return self.prober

    def __exit__(self, *exc: object) -> None:
        assert self.prober.stop_and_join(5), "the prober did not stop"
        self.registry.close()


def state_of(prober: CameraProber, key: str = KEY) -> CameraStatus:
    return prober.status()[key]


def probe_again(prober: CameraProber, key: str = KEY) -> CameraStatus:
    """Ask for a round now and wait until this camera's probe is done."""
    before = state_of(prober, key).last_probe
    prober.probe_now()
    assert wait_until(lambda: state_of(prober, key).last_probe != before, 10)
    return state_of(prober, key)


def probe_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == PROBE_LOGGER and text in record.getMessage()
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_camera_that_answers_is_up_by_its_status_call(camera: CameraSimulator) -> None:
    with Probing([device(camera.port)]) as prober:
        assert wait_until(lambda: state_of(prober).up is True)
        status = state_of(prober)
    assert status.state == "up"
    assert status.reason is None
    assert status.last_seen is not None
    assert status.last_probe == status.last_seen
    assert status.probe_call == "CGIProxy.fcgi?cmd=getDevState"
    # The cheap call, not a snapshot.
    assert camera.status_requests >= 1
    assert camera.served == 0
    assert sample_gauge("camera_up", camera=KEY) == 1
    assert sample_gauge("camera_last_seen_timestamp_seconds", camera=KEY) == status.last_seen
    assert status.as_dict()["state"] == "up"
    assert prober.troubles() == []


def test_wrong_password_is_down_with_the_reason_and_never_logged(
    camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    camera.password = WRONG
    before = sample("camera_probes_total", camera=KEY, outcome="wrong_credentials")
    with Probing([device(camera.port)]) as prober:
        assert wait_until(lambda: state_of(prober).up is False)
        status = state_of(prober)
        troubles = prober.troubles()
    assert status.reason is Reason.CREDENTIALS
    assert status.last_seen is None
    assert status.last_error is not None
    assert "pwd=***" in status.last_error
    assert sample_gauge("camera_up", camera=KEY) == 0
    assert sample("camera_probes_total", camera=KEY, outcome="wrong_credentials") == before + 1
    assert len(troubles) == 1
    assert troubles[0].startswith(f"camera '{KEY}' down since ")
    assert troubles[0].endswith(": wrong credentials")
    assert probe_lines(caplog, "down: wrong credentials")
    for secret in (PASSWORD, WRONG, "p%40ss"):
        assert secret not in caplog.text
        assert secret not in status.last_error


def test_a_hanging_camera_times_out_and_holds_up_no_other(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with (
        CameraSimulator(user="admin", password=PASSWORD, mode="hang") as hanging,
        CameraSimulator(user="admin", password=PASSWORD) as answering,
    ):
        devices = [device(hanging.port, location="Hall"), device(answering.port)]
        with Probing(devices, timeout=2.0) as prober:
            assert wait_until(lambda: state_of(prober).up is True)
            # The answering camera was probed while the other one still hangs.
            assert state_of(prober, "Hall camera").up is None
            assert wait_until(lambda: state_of(prober, "Hall camera").up is False, 10)
            status = state_of(prober, "Hall camera")
    assert status.reason is Reason.TIMEOUT
    assert len(probe_lines(caplog, "'Hall camera' down: timeout")) == 1


def test_a_closed_port_is_unreachable() -> None:
    with Probing([device(closed_port())]) as prober:
        assert wait_until(lambda: state_of(prober).up is False)
        status = state_of(prober)
    assert status.reason is Reason.UNREACHABLE
    assert "connection refused" in (status.last_error or "")


def test_bad_answers_are_down_as_bad_answer(camera: CameraSimulator) -> None:
    camera.mode = "html"
    with Probing([device(camera.port, vendor="hikvision")]) as prober:
        assert wait_until(lambda: state_of(prober).up is False)
        assert state_of(prober).reason is Reason.BAD_ANSWER
        camera.mode = "unavailable"
        status = probe_again(prober)
    assert status.reason is Reason.BAD_ANSWER
    assert "HTTP 503" in (status.last_error or "")


def test_recovery_and_one_log_line_per_change(
    camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    camera.password = WRONG
    with Probing([device(camera.port)]) as prober:
        assert wait_until(lambda: state_of(prober).up is False)
        went_down = state_of(prober).since
        for _ in range(3):
            assert probe_again(prober).up is False
        assert state_of(prober).since == went_down  # still the same spell down
        camera.password = PASSWORD
        status = probe_again(prober)
        assert status.up is True
        probe_again(prober)
        camera.mode = "hang"
        camera.fail_next(1, "unavailable")
        assert probe_again(prober).reason is Reason.BAD_ANSWER
        assert probe_again(prober).reason is Reason.TIMEOUT
    assert status.last_seen is not None
    assert went_down is not None
    assert status.since is not None
    assert status.since >= went_down
    assert len(probe_lines(caplog, "down: wrong credentials")) == 1
    assert len(probe_lines(caplog, "answers again")) == 1
    assert len(probe_lines(caplog, "down: bad answer")) == 1
    # Another reason while down is one line of its own.
    assert len(probe_lines(caplog, "still down, now: timeout")) == 1
    assert sample_gauge("camera_up", camera=KEY) == 0


def test_reports_from_the_snapshot_path_update_the_same_status(camera: CameraSimulator) -> None:
    with Probing([device(camera.port)], interval=0) as prober:
        assert state_of(prober).up is None
        assert state_of(prober).probe_call is None  # probing is off
        prober.record_failure(KEY, CameraAuthError("refused", camera=KEY))
        assert state_of(prober).reason is Reason.CREDENTIALS
        # Not asked (breaker open): says nothing about the camera.
        prober.record_failure(KEY, CameraUnavailableError("not asked", camera=KEY))
        assert state_of(prober).reason is Reason.CREDENTIALS
        prober.record_failure(KEY, Reason.TIMEOUT, "timed out after 5 s")
        assert state_of(prober).reason is Reason.TIMEOUT
        assert state_of(prober).last_probe is None
        prober.record_success(KEY)
        status = state_of(prober)
        prober.record_success("no such camera")  # ignored, not raised
    assert status.up is True
    assert status.last_seen is not None
    assert camera.requests == 0  # interval 0: never probed


def test_a_camera_whose_address_comes_with_triggers_is_probed_once_known(
    camera: CameraSimulator,
) -> None:
    unaddressed = Device.model_validate({"LOCATION": "Front Door", "TYPE": "camera"})
    with Probing([unaddressed]) as prober:
        prober.probe_now()
        assert state_of(prober).probe_call is None
        assert state_of(prober).up is None
        # A trigger's fetch makes the registry's client; the prober then knows the address.
        prober.cameras.snapshot(KEY, f"admin:{PASSWORD}@127.0.0.1:{camera.port}")
        assert state_of(prober).probe_call == "CGIProxy.fcgi?cmd=getDevState"
        assert probe_again(prober).up is True


def test_stop_is_prompt_while_a_probe_hangs() -> None:
    with CameraSimulator(user="admin", password=PASSWORD, mode="hang") as hanging:
        registry = CameraRegistry([device(hanging.port)], timeout=30.0, retries=0)
        prober = CameraProber("camera-prober", threading.Event(), cameras=registry, interval=300)
        prober.start()
        try:
            assert wait_until(lambda: hanging.requests >= 1)
            # Well before the 30 s probe timeout: stop does not wait for the camera.
            assert prober.stop_and_join(5)
            assert state_of(prober).up is None  # the cut-short probe recorded nothing
        finally:
            prober.stop_and_join(5)
            registry.close(wait=False)
        # Leaving the simulator ends the hanging request, and with it the probe's thread.


@pytest.mark.parametrize("vendor", ["foscam", "hikvision", "dahua", "reolink", "generic"])
def test_each_vendors_probe_tells_up_from_wrong_password(
    camera: CameraSimulator, vendor: str
) -> None:
    def probe(password: str) -> CameraError | None:
        spec = CameraSpec(
            key=KEY,
            vendor=vendor,
            host="127.0.0.1",
            port=camera.port,
            user="admin",
            password=password,
            url=camera.url("generic") if vendor == "generic" else None,
        )
        with make_client(spec) as client:
            try:
                client.probe()
            except CameraError as exc:
                return exc
        return None

    assert probe(PASSWORD) is None
    assert isinstance(probe(WRONG), CameraAuthError)
    # Only the generic camera, which has no status call, is probed with a snapshot.
    assert camera.served == (1 if vendor == "generic" else 0)
    assert camera.status_requests == (0 if vendor == "generic" else 1)  # authenticated ones
