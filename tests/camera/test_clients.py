"""Camera clients against the project's camera simulator, over real sockets on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote, quote_plus

import pytest
import requests
from PIL import Image

from snapshot_processor.camera.address import parse_device_params
from snapshot_processor.camera.base import CameraClient
from snapshot_processor.camera.clients import (
    DahuaClient,
    FoscamClient,
    GenericClient,
    HikvisionClient,
    ReolinkClient,
    make_client,
)
from snapshot_processor.camera.errors import (
    CameraAuthError,
    CameraBadImageError,
    CameraConnectionError,
    CameraError,
    CameraHTTPError,
    CameraTimeoutError,
    CameraVendorError,
)
from snapshot_processor.camera.jpeg import InvalidJPEGError, check_jpeg
from snapshot_processor.camera.spec import CameraSpec
from tests.support.net import free_port
from tools.camera_simulator import CameraSimulator

USER = "admin"
# Space, '@', ':', '&', '%' and '+': each breaks naive URL building somewhere.
PASSWORD = "p@ss: w&rd%20+x"
WRONG_PASSWORD = "Wr0ng p@ss:&%x"

CASES = [
    "foscam",
    "hikvision",
    "dahua",
    "reolink",
    "generic-digest",
    "generic-basic",
    "generic-none",
]
AUTH_CASES = [case for case in CASES if case != "generic-none"]
BAD_BODY_MODES = ["html", "truncated", "garbage"]

ClientFactory = Callable[..., CameraClient]


@pytest.fixture
def sim() -> Iterator[CameraSimulator]:
    simulator = CameraSimulator(user=USER, password=PASSWORD, name="test camera")
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


def make_spec(
    sim: CameraSimulator,
    case: str,
    *,
    password: str = PASSWORD,
    timeout: float = 2.0,
    retries: int = 0,
    backoff: float = 0.01,
    url: str | None = None,
) -> CameraSpec:
    """A spec for one test case; ``generic-<auth>`` also sets the simulator's auth."""
    vendor, _, auth = case.partition("-")
    if vendor == "generic":
        sim.generic_auth = auth
        url = url or sim.url("generic")
    return CameraSpec(
        key=f"{case} camera",
        vendor=vendor,
        host=sim.host,
        port=sim.port,
        user=USER,
        password=password,
        url=url,
        auth=auth or "digest",
        timeout=timeout,
        retries=retries,
        backoff=backoff,
    )


@pytest.fixture
def client_for(sim: CameraSimulator) -> Iterator[ClientFactory]:
    """Builds clients for ``sim`` and closes them before the simulator stops."""
    made: list[CameraClient] = []

    def factory(case: str, **options: object) -> CameraClient:
        client = make_client(make_spec(sim, case, **options))  # type: ignore[arg-type]
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    """Neither the message, the repr nor a chained exception may reveal a password."""
    texts = [str(exc), repr(exc), *(str(arg) for arg in exc.args)]
    for secret in secrets or (PASSWORD,):
        for form in (secret, quote(secret, safe=""), quote_plus(secret)):
            for text in texts:
                assert form not in text, f"password leaked in {text!r}"
    # Lower layers' exceptions may quote the URL: none may ride along as cause or context.
    assert exc.__cause__ is None
    assert exc.__context__ is None


def assert_jpeg(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (640, 480)
        image.load()


# -- success -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_snapshot_returns_a_valid_jpeg(
    case: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    client = client_for(case)
    assert_jpeg(client.snapshot())
    assert sim.served == 1


@pytest.mark.parametrize("case", CASES)
def test_snapshot_reuses_one_connection(
    case: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    client = client_for(case)
    for _ in range(3):
        assert_jpeg(client.snapshot())
    assert sim.served == 3
    assert sim.connections == 1
    if case in ("hikvision", "dahua", "generic-digest"):
        # One digest challenge, then the nonce is reused.
        assert sim.requests == 4


@pytest.mark.parametrize("vendor", ["foscam", "reolink", "hikvision", "dahua", "generic-basic"])
@pytest.mark.parametrize(
    "password", ["with space", "a@b:c", "x&y=z#q", "100%", "%41%20", "p+q", "ünï©ode", "ab"]
)
def test_special_characters_in_password(
    vendor: str, password: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.password = password
    assert_jpeg(client_for(vendor, password=password).snapshot())


def test_simulator_reads_plus_literally_like_foscam(sim: CameraSimulator) -> None:
    # requests' params= encodes a space as '+', which Foscam firmware reads as a plus.
    sim.password = "with space"
    with requests.Session() as session:
        answer = session.get(
            sim.url("foscam"),
            params={"cmd": "snapPicture2", "usr": USER, "pwd": "with space"},
            timeout=2,
        )
    assert "+" in (answer.request.url or "")
    assert b"<result>-2</result>" in answer.content


def test_generic_url_placeholders(sim: CameraSimulator, client_for: ClientFactory) -> None:
    client = client_for("generic-basic", url="http://{host}:{port}/snapshot.jpg")
    assert_jpeg(client.snapshot())


def test_spec_from_device_params(sim: CameraSimulator) -> None:
    address = parse_device_params(f"{USER}:{PASSWORD}@{sim.host}:{sim.port},554")
    spec = CameraSpec.from_address("front door camera", "foscam", address, timeout=1.0)
    with make_client(spec) as client:
        assert_jpeg(client.snapshot())


# -- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize("case", AUTH_CASES)
def test_wrong_password_is_auth_error_and_not_retried(
    case: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    client = client_for(case, password=WRONG_PASSWORD, retries=3)
    with pytest.raises(CameraAuthError) as caught:
        client.snapshot()
    assert caught.value.reason == "auth"
    assert not caught.value.retryable
    assert caught.value.camera == f"{case} camera"
    assert f"{case} camera" in str(caught.value)
    assert_secret_free(caught.value, WRONG_PASSWORD, PASSWORD)
    # Digest takes a challenge and one answer; no further attempts.
    assert sim.requests <= 2
    assert sim.served == 0


def test_foscam_auth_error_message(sim: CameraSimulator, client_for: ClientFactory) -> None:
    with pytest.raises(CameraAuthError, match="camera reported -2: wrong user name or password"):
        client_for("foscam", password=WRONG_PASSWORD).snapshot()


def test_reolink_auth_error_message(sim: CameraSimulator, client_for: ClientFactory) -> None:
    with pytest.raises(CameraAuthError, match=r"rspCode -7: login failed"):
        client_for("reolink", password=WRONG_PASSWORD).snapshot()


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_hanging_camera_times_out(
    case: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.mode = "hang"
    client = client_for(case, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(CameraTimeoutError) as caught:
        client.snapshot()
    assert time.monotonic() - started < 2.0
    assert caught.value.reason == "timeout"
    assert caught.value.retryable
    assert "timed out after 0.2 s" in str(caught.value)
    assert_secret_free(caught.value)


@pytest.mark.parametrize("case", ["foscam", "hikvision"])
def test_latency_beyond_timeout_is_retried_then_fails(
    case: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.latency = 0.4
    client = client_for(case, timeout=0.15, retries=1)
    with pytest.raises(CameraTimeoutError):
        client.snapshot()
    assert sim.requests == 2  # the first attempt and one retry


def test_slow_but_within_timeout_succeeds(sim: CameraSimulator, client_for: ClientFactory) -> None:
    sim.latency = 0.05
    assert_jpeg(client_for("foscam", timeout=1.0).snapshot())


# -- bad images --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", BAD_BODY_MODES)
@pytest.mark.parametrize("case", CASES)
def test_bad_body_is_bad_image_error(
    case: str, mode: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.mode = mode
    with pytest.raises(CameraBadImageError) as caught:
        client_for(case).snapshot()
    assert caught.value.reason == "bad_image"
    assert caught.value.retryable
    assert_secret_free(caught.value)


@pytest.mark.parametrize("mode", BAD_BODY_MODES)
@pytest.mark.parametrize("case", CASES)
def test_bad_body_is_retried(
    case: str, mode: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.fail_next(1, mode)
    assert_jpeg(client_for(case, retries=1).snapshot())
    assert sim.served == 1


def test_bad_image_messages(sim: CameraSimulator, client_for: ClientFactory) -> None:
    client = client_for("hikvision")
    expected = {
        "html": "not a JPEG: got an HTML page (text/html",
        "truncated": "truncated JPEG",
        "garbage": "not a JPEG: got unrecognised bytes",
    }
    for mode, words in expected.items():
        sim.mode = mode
        with pytest.raises(CameraBadImageError, match=re.escape(words)):
            client.snapshot()


# -- retries and HTTP errors -------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_retry_after_503_then_success(
    case: str, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.fail_next(2, "unavailable")
    assert_jpeg(client_for(case, retries=2).snapshot())
    assert sim.served == 1


def test_retries_exhausted_raises_last_error(
    sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.fail_next(5, "unavailable")
    with pytest.raises(CameraHTTPError) as caught:
        client_for("foscam", retries=2).snapshot()
    assert caught.value.status == 503
    assert caught.value.retryable
    assert sim.requests == 3
    assert_secret_free(caught.value)


@pytest.mark.parametrize("case", ["hikvision", "dahua", "generic-digest"])
def test_error_mode_is_http_500(case: str, sim: CameraSimulator, client_for: ClientFactory) -> None:
    sim.mode = "error"
    with pytest.raises(CameraHTTPError, match="HTTP 500") as caught:
        client_for(case).snapshot()
    assert caught.value.status == 500


@pytest.mark.parametrize(("mode", "status"), [("jpeg500", 500), ("jpeg404", 404)])
@pytest.mark.parametrize("case", CASES)
def test_error_status_with_a_valid_jpeg_body_is_refused(
    case: str, mode: str, status: int, sim: CameraSimulator, client_for: ClientFactory
) -> None:
    """The status decides, whatever the body: a whole JPEG under 500 or 404 is no snapshot
    (firmware that failed may still send its last frame, or a placeholder image)."""
    sim.mode = mode
    with pytest.raises(CameraHTTPError, match=f"HTTP {status} ") as caught:
        client_for(case).snapshot()
    assert caught.value.status == status
    assert caught.value.reason == "http"
    assert_secret_free(caught.value)
    # The camera did send a whole JPEG: refused for its status alone.
    sim.generic_auth = "none"
    with requests.get(sim.url("generic"), timeout=5) as direct:
        assert direct.status_code == status
        assert_jpeg(direct.content)


def test_foscam_failure_code_is_vendor_error_and_retried(
    sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.mode = "error"
    with pytest.raises(CameraVendorError, match="camera reported -4") as caught:
        client_for("foscam").snapshot()
    assert caught.value.code == -4
    assert caught.value.reason == "vendor"
    sim.mode = "ok"
    sim.fail_next(1, "error")
    assert_jpeg(client_for("foscam", retries=1).snapshot())


def test_reolink_json_error_is_vendor_error_not_retried(
    sim: CameraSimulator, client_for: ClientFactory
) -> None:
    sim.mode = "error"
    with pytest.raises(CameraVendorError, match="rspCode -1: snap failed") as caught:
        client_for("reolink", retries=3).snapshot()
    assert not caught.value.retryable
    assert sim.requests == 1
    assert_secret_free(caught.value)


def test_4xx_is_not_retried(sim: CameraSimulator, client_for: ClientFactory) -> None:
    client = client_for("generic-none", url=sim.base_url + "/no-such-snapshot.jpg", retries=3)
    with pytest.raises(CameraHTTPError, match="HTTP 404 Not Found") as caught:
        client.snapshot()
    assert caught.value.status == 404
    assert not caught.value.retryable
    assert sim.requests == 1


def test_connection_refused_is_connection_error() -> None:
    spec = CameraSpec(
        key="gone camera",
        vendor="foscam",
        host="127.0.0.1",
        port=free_port(),
        user=USER,
        password=PASSWORD,
        timeout=1.0,
        retries=1,
        backoff=0.01,
    )
    with make_client(spec) as client, pytest.raises(CameraConnectionError) as caught:
        client.snapshot()
    assert caught.value.reason == "connection"
    assert "gone camera: connection refused" in str(caught.value)
    assert_secret_free(caught.value)


# -- secrets -----------------------------------------------------------------------------


def test_no_password_in_logs(
    sim: CameraSimulator, client_for: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for case in ("foscam", "reolink", "hikvision"):
        client = client_for(case, retries=1)
        client.snapshot()
        for mode in ("unavailable", "truncated", "error"):
            sim.mode = mode
            with pytest.raises(CameraError) as caught:
                client.snapshot()
            assert_secret_free(caught.value)
        sim.mode = "ok"
    # The two vendors with the password in the URL, timing out.
    sim.mode = "hang"
    for case in ("foscam", "reolink"):
        with pytest.raises(CameraTimeoutError) as timed_out:
            client_for(case, timeout=0.2).snapshot()
        assert_secret_free(timed_out.value)
    sim.mode = "ok"
    wrong = client_for("foscam", password=WRONG_PASSWORD)
    with pytest.raises(CameraAuthError):
        wrong.snapshot()
    assert caplog.records, "expected debug logs from the clients"
    assert any("pwd=***" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        message = record.getMessage()
        for secret in (PASSWORD, WRONG_PASSWORD):
            assert secret not in message
            assert quote(secret, safe="") not in message


def test_reprs_hide_passwords(sim: CameraSimulator, client_for: ClientFactory) -> None:
    spec = make_spec(sim, "foscam")
    generic = CameraSpec(
        key="gate camera",
        vendor="generic",
        host="cam",
        port=80,
        user=USER,
        password=PASSWORD,
        url=f"http://{USER}:{quote(PASSWORD, safe='')}@cam/snap.cgi?user=admin&pwd={{password}}",
    )
    for text in (repr(spec), str(spec), repr(generic), repr(client_for("foscam"))):
        assert PASSWORD not in text
        assert quote(PASSWORD, safe="") not in text
    assert "password='***'" in repr(spec)
    assert "http://cam/snap.cgi?user=***&pwd=***" in repr(generic)


# -- client lifecycle and threads --------------------------------------------------------


def test_one_client_shared_by_threads(sim: CameraSimulator, client_for: ClientFactory) -> None:
    client = client_for("dahua")
    results: list[bytes] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            try:
                data = client.snapshot()
            except BaseException as exc:
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    results.append(data)

    threads = [threading.Thread(target=work, name=f"snapper-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert len(results) == 20
    assert sim.served == 20
    assert sim.connections == 1


def test_closed_client_refuses(sim: CameraSimulator) -> None:
    client = make_client(make_spec(sim, "foscam"))
    with client:
        assert_jpeg(client.snapshot())
    assert client.closed
    client.close()  # idempotent
    with pytest.raises(CameraConnectionError, match="client is closed"):
        client.snapshot()


def test_close_interrupts_back_off(sim: CameraSimulator) -> None:
    sim.fail_next(100, "unavailable")
    client = make_client(make_spec(sim, "foscam", retries=5, backoff=30.0))
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            client.snapshot()
        except CameraError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="snapper")
    thread.start()
    deadline = time.monotonic() + 5
    while sim.requests < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    client.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
    assert isinstance(outcome[0], CameraHTTPError)


def test_make_client_picks_the_vendor_class(sim: CameraSimulator) -> None:
    expected: dict[str, type[CameraClient]] = {
        "foscam": FoscamClient,
        "hikvision": HikvisionClient,
        "dahua": DahuaClient,
        "reolink": ReolinkClient,
        "generic-digest": GenericClient,
    }
    for case, cls in expected.items():
        with make_client(make_spec(sim, case)) as client:
            assert type(client) is cls


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"vendor": "axis"}, "unknown camera vendor"),
        ({"vendor": "generic"}, "needs a snapshot url"),
        ({"vendor": "generic", "url": "ftp://cam/snap"}, "must be http"),
        ({"auth": "ntlm"}, "unknown auth mode"),
        ({"scheme": "rtsp"}, "scheme"),
        ({"timeout": 0.0}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"port": 0}, "out of range"),
    ],
)
def test_spec_validation(options: dict[str, object], words: str) -> None:
    fields: dict[str, object] = {
        "key": "porch camera",
        "vendor": "foscam",
        "host": "cam",
        "port": 88,
        "user": USER,
        "password": PASSWORD,
    }
    fields.update(options)
    with pytest.raises(ValueError, match=words) as caught:
        CameraSpec(**fields)  # type: ignore[arg-type]
    assert PASSWORD not in str(caught.value)


# -- JPEG check --------------------------------------------------------------------------


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def test_check_jpeg() -> None:
    good = _jpeg()
    check_jpeg(good)
    check_jpeg(good + b"\x00\x00\r\n")  # padding after the end marker is tolerated
    for bad, words in (
        (good[: len(good) // 2], "truncated"),
        (b"", "not a JPEG"),
        (b"<html>oops</html>", "HTML page"),
        (good[:2] + b"\x00" * 200 + good[-2:], "does not decode"),
    ):
        with pytest.raises(InvalidJPEGError, match=words):
            check_jpeg(bad)
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with pytest.raises(InvalidJPEGError, match="not a JPEG"):
        check_jpeg(png.getvalue())


# -- simulator ---------------------------------------------------------------------------


def test_simulator_stop_is_prompt_while_requests_hang() -> None:
    simulator = CameraSimulator(user=USER, password=PASSWORD, mode="hang").start()
    failures: list[BaseException] = []

    def fetch() -> None:
        try:
            with requests.Session() as session:
                session.get(simulator.url("generic"), timeout=10)
        except requests.RequestException as exc:
            failures.append(exc)

    # Without auth the generic path hangs at once (no digest challenge first).
    simulator.generic_auth = "none"
    hanging = [threading.Thread(target=fetch, name=f"hanging-{n}") for n in range(3)]
    for thread in hanging:
        thread.start()
    deadline = time.monotonic() + 5
    while simulator.requests < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    simulator.stop()
    assert time.monotonic() - started < 1.0
    for thread in hanging:
        thread.join(5)
        assert not thread.is_alive()


def simulator_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("camera-simulator-conn")}


def test_simulator_serves_new_connections_on_spare_threads_and_keeps_them() -> None:
    """New connections at once start no thread while spares wait (one process stands in
    for many cameras, each of which would accept its own), and a thread whose
    connection closed takes the next one."""
    with CameraSimulator(user=USER, password=PASSWORD, spare_threads=4) as simulator:
        simulator.generic_auth = "none"
        spares = simulator_threads()
        assert len(spares) == 4
        sessions = [requests.Session() for _ in range(4)]
        try:
            for session in sessions:  # four connections open at once
                assert session.get(simulator.url("generic"), timeout=5).status_code == 200
            assert simulator.connections == 4
            assert simulator_threads() == spares
        finally:
            for session in sessions:
                session.close()
        # A fifth while the four threads may still be on their closing connections:
        # served either way, and the threads stay few.
        with requests.Session() as session:
            assert session.get(simulator.url("generic"), timeout=5).status_code == 200
        assert len(simulator_threads()) <= 5
    assert not simulator_threads()


def test_simulator_rejects_unknown_mode() -> None:
    simulator = CameraSimulator()
    with pytest.raises(ValueError, match="unknown simulator mode"):
        simulator.mode = "explode"


def test_simulator_command_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.camera_simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", first_line)
        assert match, first_line
        spec = CameraSpec(
            key="demo camera",
            vendor="reolink",
            host="127.0.0.1",
            port=int(match.group(1)),
            user="admin",
            password="secret",
        )
        with make_client(spec) as client:
            assert_jpeg(client.snapshot())
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
