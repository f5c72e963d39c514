"""Log lines worth reading: one per event, a start-up summary, outside text escaped,
the outbox depth warned once, and the metrics port on loopback."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pylib.amqp.outbox import Outbox
from pylib.chain.settle import PUBLISH_KIND
from pylib.observe.logs import printable
from pylib.observe.redact import redact
from pylib.runtime.daemon import EXIT_START
from snapshot_processor import config
from snapshot_processor.app import App
from snapshot_processor.contract.messages import SnapshotMessage
from snapshot_processor.contract.publication import EventBuilder
from snapshot_processor.ops.feature import metrics_listener
from snapshot_processor.ops.summary import no_camera_hint, startup_summary
from tests.support.net import free_port


def _snapshot(**fields: object) -> SnapshotMessage:
    base: dict[str, object] = {
        "event_id": "e1",
        "camera_key": "Front Door camera",
        "device_label": "Front Door camera",
        "image": b"\xff\xd8" + b"x" * 1000 + b"\xff\xd9",
        "taken": time.time() - 0.25,
        "storage_path": "/data/snapshots/x.jpg",
        "source": "fetch",
    }
    return SnapshotMessage(**{**base, **fields})  # type: ignore[arg-type]


def _event_line(snap: SnapshotMessage, caplog: pytest.LogCaptureFixture) -> str:
    caplog.set_level(logging.INFO, logger="snapshot_processor.contract.publication")
    caplog.clear()
    out = EventBuilder("home_automation", "snapshot", "garage")(snap.envelope())
    assert out.kind == PUBLISH_KIND
    [record] = [r for r in caplog.records if r.name == "snapshot_processor.contract.publication"]
    assert record.levelno == logging.INFO
    return record.getMessage()


def test_one_info_line_per_event_says_what_went_out(caplog: pytest.LogCaptureFixture) -> None:
    line = _event_line(_snapshot(), caplog)
    assert line.startswith("event e1: camera Front Door camera, fetch, 1004 bytes, no detection, ")
    ms = int(line.rsplit(", ", 1)[1].split(" ms")[0])
    assert 250 <= ms < 5000

    found = _snapshot(
        source="upload",
        analysed=True,
        detections=[
            {"label": "Person", "person": True},
            {"label": "Car"},
            {"label": "Person", "person": True},
        ],
    )
    assert ", upload, 1004 bytes, Person x2, Car, " in _event_line(found, caplog)
    nothing = _snapshot(analysed=True)
    assert "nothing detected" in _event_line(nothing, caplog)
    skipped = _snapshot(detection_skipped="duplicate")
    assert "detection skipped (duplicate)" in _event_line(skipped, caplog)


def test_outside_text_is_escaped_in_the_event_line(caplog: pytest.LogCaptureFixture) -> None:
    snap = _snapshot(
        camera_key="Yard\ncamera",
        analysed=True,
        detections=[{"label": "cat\u202egod\x00"}],
    )
    line = _event_line(snap, caplog)
    assert "\n" not in line
    assert "\u202e" not in line
    assert "\x00" not in line
    assert "camera Yard\\ncamera," in line
    assert "cat\\u202egod\\x00" in line


def test_printable_escapes_controls_and_bidi_only() -> None:
    assert printable("Front Door ä 😀") == "Front Door ä 😀"
    assert printable("a\rb\tc\x1b[31m\u2066d\u200be") == "a\\rb\\tc\\x1b[31m\\u2066d\\u200be"


def test_startup_summary_names_cameras_ftp_detection_and_storage(tmp_path: Path) -> None:
    settings = config.load(
        env={
            "SNAPSHOTS_ROOT_DIR": str(tmp_path),
            "HTTP_PORT": "0",
            "SECRETS_DIR": str(tmp_path / "none"),
            "OUTPUT_1_LOCATION": "Front\u202eDoor",
            "OUTPUT_1_TYPE": "camera",
            "OUTPUT_1_VENDOR": "hikvision",
            "OUTPUT_2_LOCATION": "Garage",
            "OUTPUT_2_TYPE": "camera",
            "INPUT_1_LOCATION": "Yard",
            "INPUT_1_TYPE": "camera",
            "FTP_PASS": "secretpw",
            "FTP_PORT": "2121",
            "OBJECT_DETECTION_ENABLED": "true",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "MQTT_URL": "mqtts://daemon:mqtt-secret@ha.lan",
        }
    )
    lines = startup_summary(settings)
    text = "\n".join(lines)
    assert len(lines) == 6
    assert '"Front\\u202eDoor camera" (hikvision), "Garage camera" (foscam)' in lines[0]
    assert '"Yard camera"' in lines[1]
    assert "FTP on at 0.0.0.0:2121" in lines[1]
    assert lines[2] == "detection: rekognition in eu-west-1"
    assert str(tmp_path) in lines[3]
    assert "outbox.sqlite3" in lines[3]
    assert "secretpw" not in text
    assert "\u202e" not in text
    assert lines[4] == "cloud storage: off; status page and API: off"
    assert lines[5] == (
        "Home Assistant over MQTT: mqtts://daemon@ha.lan:8883, discovery under homeassistant/, "
        "states under snapshot-processor/"
    )
    assert "mqtt-secret" not in text

    # A camera output or a pushing camera is enough; with neither, one line says where to start.
    assert no_camera_hint(settings) is None
    pushing = {"SNAPSHOTS_ROOT_DIR": str(tmp_path), "INPUT_1_LOCATION": "Yard"}
    assert no_camera_hint(config.load(env={**pushing, "INPUT_1_TYPE": "camera"})) is None
    hint = no_camera_hint(config.load(env={"SNAPSHOTS_ROOT_DIR": str(tmp_path)}))
    assert hint is not None
    assert "no camera is configured" in hint
    assert "OUTPUT_1_TYPE=camera" in hint
    plain = startup_summary(config.load(env={"SNAPSHOTS_ROOT_DIR": str(tmp_path)}))
    assert plain[0].endswith(": none")
    assert "FTP off" in plain[1]
    assert plain[2] == "detection: off"
    assert plain[5] == "Home Assistant over MQTT: off (no MQTT_URL)"
    assert plain[4] == (
        "cloud storage: off; status page and API: http://127.0.0.1:8080/ "
        "(open to this machine, as HTTP_TOKEN is not set)"
    )
    # The lines pass the log's redaction unchanged: nothing in them looks like a secret.
    assert [redact(line) for line in [*lines, *plain]] == [*lines, *plain]
    cloud = startup_summary(
        config.load(
            env={
                "SNAPSHOTS_ROOT_DIR": str(tmp_path),
                "SECRETS_DIR": str(tmp_path / "none"),
                "S3_BUCKET": "house-pictures",
                "HTTP_TOKEN": "a-token-of-at-least-16-chars",
            }
        )
    )
    assert cloud[4] == (
        "cloud storage: S3 bucket house-pictures; status page and API: "
        "http://127.0.0.1:8080/ (token required)"
    )
    assert "a-token-of-at-least" not in cloud[4]


def test_outbox_depth_hovering_at_a_threshold_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pylib.amqp.outbox")
    box = Outbox(tmp_path / "outbox.sqlite3", max_entries=5)
    try:
        # One in flight, then events arriving as fast as they are confirmed: the depth
        # goes 1, 2, 1, 2, ... and never back to 0.
        oldest = box.append("x", "k", b"m")
        for _ in range(20):
            newest = box.append("x", "k", b"m")
            box.remove(oldest)
            oldest = newest
        # And at the limit: full, one out, full again.
        extra = [box.append("x", "k", b"m") for _ in range(4)]
        for _ in range(5):
            box.remove(extra.pop(0))
            extra.append(box.append("x", "k", b"m"))
    finally:
        box.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    holds = [w for w in warnings if "holds" in w]
    full = [w for w in warnings if "is full" in w]
    assert len(full) == 1, warnings
    # Crossing 1, then 2 (20 % of 5), 3, 4 on the way up: each once.
    assert [w.split(" holds ")[1].split(" ")[0] for w in holds] == ["2", "3", "4"], warnings


def _listen_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on ``port``, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_metrics_listen_on_loopback_and_a_taken_port_is_a_clear_start_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    env = {"SNAPSHOTS_ROOT_DIR": str(tmp_path), "METRICS_PORT": str(port)}
    app = App(config.load(env=env))
    metrics_listener(app.settings, app.daemon)
    app.daemon.start()
    try:
        assert _listen_addresses(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b"outbox_depth" in answer.read()
        # The same Host rule as the main server: a rebinding page reads nothing here either.
        renamed = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Host": f"evil.example:{port}"}
        )
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(renamed, timeout=5)
        second = App(config.load(env=env))
        metrics_listener(second.settings, second.daemon)
        caplog.set_level(logging.ERROR, logger="pylib.runtime.daemon")
        assert second.daemon.run() == EXIT_START
        [line] = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and r.name == "pylib.runtime.daemon"
        ]
        assert f"metrics: HTTP port 127.0.0.1:{port} cannot be used" in line.getMessage()
        assert line.exc_info is None
    finally:
        assert app.daemon.stop()
