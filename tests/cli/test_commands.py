"""Each CLI command's output and exit code, error cases included, against the camera
simulator, the real RabbitMQ (marked ``broker``) and a real daemon for ``trigger``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from pylib.amqp.outbox import Outbox
from pylib.runtime import dataroot
from pylib.upload.destination import UploadItem
from pylib.upload.queue import UploadQueue
from snapshot_processor import cli, config
from snapshot_processor.cli.common import (
    EXIT_BROKER,
    EXIT_BUSY,
    EXIT_CAMERA,
    EXIT_CONFIG,
    EXIT_NO_EVENT,
)
from snapshot_processor.contract import event
from tests.support import rtsp
from tests.support.broker import BROKER, delete_queue, running_app, unique_exchange
from tests.support.daemon import camera_env
from tests.support.fakes.sentry import SentryReceiver
from tests.support.net import free_port
from tests.support.paths import CHECKOUT
from tests.support.wait import wait_for_text
from tools.camera_simulator import CameraSimulator

PASSWORD = "cl1 p@ss:word"
KEY = "Front Door camera"
REPO = CHECKOUT


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def write_config(tmp_path: Path, **values: str) -> Path:
    """A settings file as a user writes one (JSON strings are TOML basic strings)."""
    settings = {
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "DEVICE_NAME": "garage",
        "CAMERA_TIMEOUT": "2",
        "CAMERA_RETRIES": "0",
        # No HTTP server: a daemon started from this file must not need the default port
        # 8080, which another process may hold.
        "HTTP_PORT": "0",
        **values,
    }
    path = tmp_path / "settings.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def camera_config(port: int, password: str = PASSWORD) -> dict[str, str]:
    return camera_env(port, password)


def cli_main(settings_file: Path, *argv: str) -> int:
    return cli.main(["--config", str(settings_file), *argv])


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def start_cli(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The console command as a child process, its output in a file."""
    out = tmp_path / "cli.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snapshot_processor", *argv],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return proc, out


def finish(proc: subprocess.Popen[bytes], out: Path) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out.read_text(errors="replace")


# --- help ---------------------------------------------------------------------------------
def test_help_lists_every_command_and_each_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    names = [command.name for command in cli.COMMANDS]
    assert {"run", "check-config", "snap", "trigger", "events", "outbox", "uploads"} <= set(names)
    assert "simulate-cameras" in names
    for name in names:
        assert name in listing
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        assert f"snapshot-processor {name}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["outbox", "discard", "--help"])
    assert "--yes" in capsys.readouterr().out


def test_unknown_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["outbox", "--bogus"])
    assert done.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# --- snap ---------------------------------------------------------------------------------
def test_snap_writes_the_jpeg_and_says_what_came(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, **camera_config(camera.port))
    target = tmp_path / "front.jpg"
    assert cli_main(settings, "snap", "front door CAMERA", "-o", str(target)) == 0
    out = capsys.readouterr().out
    with Image.open(target) as image:
        assert (image.format, image.size) == ("JPEG", (640, 480))
    assert (
        f"'{KEY}' (foscam at 127.0.0.1:{camera.port}) answered {target.stat().st_size} bytes" in out
    )
    assert "JPEG 640x480, in " in out
    assert f"written to {target}" in out
    assert camera.served == 1
    assert PASSWORD not in out


def test_snap_names_a_file_in_the_current_folder(
    tmp_path: Path,
    camera: CameraSimulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = write_config(tmp_path, **camera_config(camera.port))
    monkeypatch.chdir(tmp_path)
    assert cli_main(settings, "snap", KEY) == 0
    (written,) = tmp_path.glob("snap-front-door-camera-*.jpg")
    assert f"written to {written}" in capsys.readouterr().out


def test_snap_of_an_unknown_camera_names_the_configured_ones(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, **camera_config(camera.port))
    assert cli_main(settings, "snap", "Garage camera") == EXIT_CONFIG
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"snapshot-processor snap: no camera output named 'Garage camera'; configured: '{KEY}'"
    )


def test_snap_with_a_wrong_password_fails_in_one_line(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, **camera_config(camera.port, password="wr0ng p@ss"))
    assert cli_main(settings, "snap", KEY) == EXIT_CAMERA
    err = capsys.readouterr().err
    line = one_line(err)
    assert "wrong user name or password" in line
    assert "pwd=***" in line
    assert "wr0ng" not in err
    assert not list(tmp_path.glob("snap-*.jpg"))


def test_snap_of_a_closed_port_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, **camera_config(free_port()))
    assert cli_main(settings, "snap", KEY) == EXIT_CAMERA
    assert "connection refused" in one_line(capsys.readouterr().err)


def test_a_configuration_error_is_exit_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, LOG_LEVEL="LOUD")
    assert cli_main(settings, "snap", KEY) == EXIT_CONFIG
    line = one_line(capsys.readouterr().err)
    assert line.startswith("snapshot-processor snap: configuration: ")
    assert "LOG_LEVEL" in line


# --- broker unreachable -------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["events", "--count", "1"], ["trigger", KEY]])
def test_an_unreachable_broker_is_one_line(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    settings = write_config(
        tmp_path, RABBITMQ_SERVER_ADDRESS=f"127.0.0.1:{port}", **camera_config(free_port())
    )
    assert cli_main(settings, *argv) == EXIT_BROKER
    line = one_line(capsys.readouterr().err)
    assert f"cannot reach the broker at 127.0.0.1:{port}/" in line
    assert "Connection refused" in line or "ConnectionRefusedError" in line


# --- outbox -------------------------------------------------------------------------------
def test_outbox_show_replay_and_discard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = write_config(tmp_path)
    settings = config.load(env={}, config_file=settings_file)
    assert cli_main(settings_file, "outbox") == 0
    assert "none yet" in capsys.readouterr().out

    with Outbox(settings.outbox_path) as box:
        first = box.append("home", "event.notify.snapshot.garage.image", b"one")
        box.append("home", "event.heartbeat.snapshot", b"two")
        box.park(first, "NOT_FOUND - no exchange 'home'")
    assert cli_main(settings_file, "outbox") == 0
    out = capsys.readouterr().out
    assert "1 message(s) waiting" in out
    assert "routing key event.heartbeat.snapshot" in out
    assert "parked (set aside, not published): 1" in out
    assert f"id {first}: event.notify.snapshot.garage.image on home, 3 bytes" in out
    assert "NOT_FOUND - no exchange 'home'" in out

    # While a daemon holds the data root, nothing is changed.
    with dataroot.DataRootLock(settings.snapshots_root_dir):
        assert cli_main(settings_file, "outbox", "replay") == EXIT_BUSY
    assert "in use by another daemon" in one_line(capsys.readouterr().err)

    assert cli_main(settings_file, "outbox", "replay") == 0
    assert "1 parked message(s) put back for publishing; 0 still parked" in capsys.readouterr().out
    with Outbox(settings.outbox_path) as box:
        assert [entry.body for entry in box.peek()] == [b"two", b"one"]
        assert box.parked() == []
        box.park(box.peek()[1].id, "NOT_FOUND again")

    assert cli_main(settings_file, "outbox", "discard") == EXIT_CONFIG
    assert "add --yes" in capsys.readouterr().err
    assert cli_main(settings_file, "outbox", "discard", "--yes") == 0
    assert "1 parked message(s) discarded" in capsys.readouterr().out
    with Outbox(settings.outbox_path) as box:
        assert box.parked() == []
        assert len(box) == 1


# --- simulate-cameras ---------------------------------------------------------------------
def test_simulate_cameras_serves_until_ctrl_c(tmp_path: Path) -> None:
    proc, out = start_cli(tmp_path, "simulate-cameras", "--port", "0", "--password", "pw")
    try:
        assert wait_for_text(out, "/cgi-bin/CGIProxy.fcgi", 20), out.read_text()
        proc.send_signal(signal.SIGINT)
    finally:
        code, text = finish(proc, out)
    assert code == 0, text
    assert "camera simulator listening on http://127.0.0.1:" in text


# --- with RabbitMQ ------------------------------------------------------------------------
def publish_image_event(exchange: str) -> None:
    body = event.pack(
        event.image_event(
            event_id="evt-1",
            device_key=KEY,
            device_label="Front Door",
            image=b"\xff\xd8" + b"x" * 98,
            image_time=1_700_000_000,
            storage_path="/data/snapshots/front.jpg",
            source="fetch",
            detections=[{"label": "Person", "confidence": 97.5, "person": True}],
        )
    )
    connection = pika.BlockingConnection(BROKER)
    try:
        connection.channel().basic_publish(exchange, "event.notify.snapshot.garage.image", body)
    finally:
        connection.close()


@pytest.mark.broker
def test_events_prints_each_event_as_it_comes(tmp_path: Path) -> None:
    exchange = unique_exchange()
    settings = write_config(tmp_path, RABBITMQ_EXCHANGE=exchange)
    proc, out = start_cli(tmp_path, "--config", str(settings), "events", "--count", "1")
    try:
        assert wait_for_text(out, "listening on", 20), out.read_text()
        publish_image_event(exchange)
    finally:
        code, text = finish(proc, out)
    assert code == 0, text
    assert (
        f"event.notify.snapshot.garage.image camera '{KEY}' 100 bytes, detections: Person 98% "
        "(1 person(s) and 1 things), storage_url: -, storage_path: /data/snapshots/front.jpg, "
        "event evt-1"
    ) in text


@pytest.mark.broker
def test_events_ends_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    settings = write_config(tmp_path, RABBITMQ_EXCHANGE=unique_exchange())
    proc, out = start_cli(tmp_path, "--config", str(settings), "events")
    try:
        assert wait_for_text(out, "listening on", 20), out.read_text()
        proc.send_signal(signal.SIGINT)
    finally:
        code, text = finish(proc, out)
    assert code == 0, text
    assert "Traceback" not in text


@pytest.mark.broker
def test_events_with_too_few_in_time_is_exit_7(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path, RABBITMQ_EXCHANGE=unique_exchange())
    assert cli_main(settings, "events", "--count", "1", "--timeout", "0.3") == EXIT_NO_EVENT
    assert one_line(capsys.readouterr().err).endswith("0 of 1 event(s) within 0.3 s")


@pytest.mark.broker
def test_trigger_comes_back_as_an_event_from_a_real_daemon(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    exchange = unique_exchange()
    settings_file = write_config(tmp_path, RABBITMQ_EXCHANGE=exchange, **camera_config(camera.port))
    with running_app(config.load(env={}, config_file=settings_file)):
        assert cli_main(settings_file, "trigger", "front door camera", "--timeout", "20") == 0
    out = capsys.readouterr().out
    line = one_line(out)
    assert line.startswith("event after ")
    assert f"event.notify.snapshot.garage.image camera '{KEY}' " in line
    assert camera.served == 1


@pytest.mark.broker
def test_trigger_without_an_event_in_time_is_exit_7(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon runs, but the camera refuses its password: no event comes.
    exchange = unique_exchange()
    settings_file = write_config(
        tmp_path, RABBITMQ_EXCHANGE=exchange, **camera_config(camera.port, password="wr0ng")
    )
    with running_app(config.load(env={}, config_file=settings_file)):
        assert cli_main(settings_file, "trigger", KEY, "--timeout", "1") == EXIT_NO_EVENT
    # The last line: the daemon in this process logs its failure to the same stderr.
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"snapshot-processor trigger: no event from camera '{KEY}' within 1 s "
        "(the daemon's log says why)"
    )


@pytest.mark.broker
def test_trigger_with_no_daemon_says_so(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    exchange = unique_exchange()
    settings = write_config(tmp_path, RABBITMQ_EXCHANGE=exchange, **camera_config(camera.port))
    try:
        assert cli_main(settings, "trigger", KEY, "--timeout", "5") == EXIT_NO_EVENT
    finally:
        delete_queue(f"{exchange}.snapshot.garage.triggers")  # none was made; harmless
    assert "no daemon is running on this exchange" in one_line(capsys.readouterr().err)


def test_uploads_shows_the_queue_and_retries_parked_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_config(tmp_path)
    assert cli_main(settings, "uploads") == 0
    assert "none yet" in capsys.readouterr().out
    path = tmp_path / "data" / "uploads.sqlite3"
    queue = UploadQueue(path, max_attempts=2)
    try:
        items = [
            UploadItem(tmp_path / f"cam_{n}.jpg", f"cam_{n}.jpg", "Front Door camera", 1e9 + n)
            for n in range(3)
        ]
        queue.add([("drive", item) for item in items] + [("s3", items[0])])
        [first, *_] = queue.due(time.time(), 10)
        assert queue.park(first.id, "HTTP 400 badRequest")
    finally:
        queue.close()
    assert cli_main(settings, "uploads", "show") == 0
    out = capsys.readouterr().out
    assert "3 upload(s) waiting" in out
    assert "drive: 3 (parked included)" in out
    assert "s3: 1 (parked included)" in out
    assert "parked (refused or out of tries): 1" in out
    assert "cam_0.jpg for drive" in out
    assert "HTTP 400 badRequest" in out
    assert cli_main(settings, "uploads", "retry", "--destination", "s3") == 0
    assert "0 parked upload(s) put back" in capsys.readouterr().out
    assert cli_main(settings, "uploads", "retry") == 0
    assert "1 parked upload(s) put back" in capsys.readouterr().out
    queue = UploadQueue(path, max_attempts=2)
    try:
        assert queue.parked() == 0
        assert queue.depth() == 4
    finally:
        queue.close()


@pytest.mark.broker
def test_trigger_says_at_once_why_the_camera_failed(
    tmp_path: Path, camera: CameraSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon's HTTP API knows the camera refused the password: said within seconds.
    exchange = unique_exchange()
    settings_file = write_config(
        tmp_path,
        RABBITMQ_EXCHANGE=exchange,
        HTTP_PORT=str(free_port()),
        **camera_config(camera.port, password="wr0ng"),
    )
    with running_app(config.load(env={}, config_file=settings_file)):
        started = time.monotonic()
        assert cli_main(settings_file, "trigger", KEY, "--timeout", "60") == EXIT_CAMERA
        # At once: not after its attempts (7 s with these settings), nor at the timeout.
        assert time.monotonic() - started < 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"snapshot-processor trigger: camera '{KEY}' failed: ")
    assert "401" in line or "password" in line, line


@pytest.fixture
def moto_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server, with fake credentials and none of this machine's AWS files."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLETESTING",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key-not-real",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.mark.broker
def test_check_config_online_says_per_outside_system_what_works(
    tmp_path: Path, camera: CameraSimulator, moto_s3: str, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = CameraSimulator(user="admin", password="the right one")
    wrong.start()
    try:
        settings = write_config(
            tmp_path,
            RABBITMQ_EXCHANGE=unique_exchange(),
            S3_BUCKET="no-such-bucket",
            **camera_config(camera.port),
            **camera_env(wrong.port, "wr0ng", n=2, location="Garage"),
        )
        assert cli_main(settings, "check-config", "--online") == EXIT_CONFIG
    finally:
        wrong.stop()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    broker = next(line for line in lines if "broker 127.0.0.1:5672" in line)
    assert ": ok, logged in; exchange" in broker
    good = next(line for line in lines if f"camera '{KEY}'" in line)
    assert ": ok, a snapshot of " in good
    bad = next(line for line in lines if "camera 'Garage camera'" in line)
    assert ": FAILED: " in bad
    assert "401" in bad or "password" in bad
    assert bad.endswith("; check OUTPUT_2_USER and OUTPUT_2_PASSWORD")
    bucket = next(line for line in lines if "S3 bucket no-such-bucket" in line)
    assert ": FAILED: " in bucket
    assert "404" in bucket or "NoSuchBucket" in bucket
    assert bucket.endswith("; check S3_BUCKET, AWS_DEFAULT_REGION and the AWS credentials")
    assert "2 outside system(s) failed" in out.err
    assert "wr0ng" not in out.out + out.err


@pytest.mark.broker
@pytest.mark.rtsp
@pytest.mark.skipif(not rtsp.available(), reason="GStreamer's RTSP server is not installed")
def test_check_config_online_takes_a_still_from_an_rtsp_camera_and_names_its_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with rtsp.RtspServer("admin", PASSWORD) as server:
        settings = write_config(
            tmp_path,
            RABBITMQ_EXCHANGE=unique_exchange(),
            **{
                f"OUTPUT_{n}_{name}": value
                for n, path in ((1, "/cam"), (2, "/no-such-stream"))
                for name, value in {
                    "LOCATION": f"Stream {n}",
                    "TYPE": "camera",
                    "VENDOR": "rtsp",
                    "URL": server.url("", "", path=path),
                    "USER": "admin",
                    "PASSWORD": PASSWORD,
                }.items()
            },
        )
        assert cli_main(settings, "check-config", "--online") == EXIT_CONFIG
    lines = capsys.readouterr().out.splitlines()
    good = next(line for line in lines if "camera 'Stream 1 camera'" in line)
    assert ": ok, a snapshot of " in good
    bad = next(line for line in lines if "camera 'Stream 2 camera'" in line)
    assert "FAILED: Stream 2 camera: RTSP: no stream at this path" in bad
    assert bad.endswith("; check OUTPUT_2_URL")


def test_check_config_online_names_the_setting_of_a_broker_away_and_keeps_sentrys_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SentryReceiver() as sentry:
        settings = write_config(
            tmp_path, RABBITMQ_SERVER_ADDRESS=f"127.0.0.1:{free_port()}", SENTRY_DSN=sentry.dsn
        )
        assert cli_main(settings, "check-config", "--online") == EXIT_CONFIG
        port = sentry.dsn.rsplit(":", 1)[1].split("/", 1)[0]
    out = capsys.readouterr()
    [broker] = [line for line in out.out.splitlines() if "broker 127.0.0.1:" in line]
    assert "FAILED: " in broker
    assert "Connection refused" in broker
    assert broker.endswith("; check RABBITMQ_SERVER_ADDRESS (or RABBITMQ_URL)")
    [reached] = [line for line in out.out.splitlines() if line.startswith("  Sentry: ")]
    assert f": ok, 127.0.0.1:{port} answers (HTTP " in reached
    assert "1 outside system(s) failed" in out.err
