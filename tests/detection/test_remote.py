"""Detection by ``detect-worker`` processes over RabbitMQ (DETECTION_REMOTE): the worker's
decision comes back into the event, its errors too, and a frame no worker answers in time
goes out without detections. A real worker process, the real broker, Rekognition faked on
loopback."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from snapshot_processor.detection.base import Box, Detection
from snapshot_processor.detection.cascade import Decision
from snapshot_processor.detection.work import (
    Reply,
    ReplyError,
    encode_decision,
    work_queue,
)
from tests.support.broker import (
    BROKER,
    Peer,
    delete_queue,
    running_app,
    trigger_body,
    unique_exchange,
)
from tests.support.daemon import PASSWORD, foscam_env, make_settings, spawn_daemon
from tests.support.fakes.rekognition import FakeRekognition, label
from tools.camera_simulator import CameraSimulator

KEY = "Front Door camera"


def test_a_decision_crosses_the_wire_whole() -> None:
    decision = Decision(
        [
            Detection("Person", 91.5, Box(0.1, 0.2, 0.3, 0.4), person=True),
            Detection("Tree", 60.0, None, person=False),
        ],
        "onnx,rekognition",
        why="unsure",
        local_person_confidence=47.25,
    )
    reply = Reply.parse(encode_decision(decision))
    assert reply.error is None
    assert reply.decision == Decision(
        list(decision.detections), "onnx,rekognition", "unsure", 47.25
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"detections": 3}',
        b'{"detections": [{"label": "x"}], "backend": "b"}',
        b"\xff",
    ],
)
def test_a_reply_that_is_not_a_workers_is_refused(body: bytes) -> None:
    with pytest.raises(ReplyError):
        Reply.parse(body)


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def consumers(queue: str) -> int:
    connection = pika.BlockingConnection(BROKER)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0  # not declared yet
    finally:
        if connection.is_open:
            connection.close()


def start_worker(
    exchange: str, rekognition: FakeRekognition, root: Path
) -> subprocess.Popen[bytes]:
    """A detect-worker process with Rekognition (faked) on ``exchange``, consuming."""
    root.mkdir(parents=True)
    queue = work_queue(exchange, "snapshot")
    before = consumers(queue)
    process = spawn_daemon(
        {
            "RABBITMQ_EXCHANGE": exchange,
            "DEVICE_NAME": "gpu-box",
            "SNAPSHOTS_ROOT_DIR": str(root),
            "SECRETS_DIR": str(root / "no-secrets"),
            "OBJECT_DETECTION_ENABLED": "true",
            "OBJECT_DETECTION_BACKEND": "rekognition",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL_REKOGNITION": rekognition.base_url,
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "example-secret-key",
        },
        root / "worker.log",
        command="detect-worker",
    )
    deadline = time.monotonic() + 20
    while consumers(queue) <= before:
        assert process.poll() is None, (root / "worker.log").read_text()
        assert time.monotonic() < deadline, "the worker did not consume"
        time.sleep(0.1)
    return process


def stop_worker(process: subprocess.Popen[bytes], root: Path) -> None:
    """SIGTERM: the worker ends with 0, and its log holds no secret."""
    process.terminate()
    code = process.wait(15)
    log = (root / "worker.log").read_text()
    assert code == 0, log
    assert "example-secret-key" not in log


@pytest.fixture
def rekognition() -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        yield fake


@pytest.fixture
def worker(tmp_path: Path, rekognition: FakeRekognition) -> Iterator[tuple[str, FakeRekognition]]:
    """One detect-worker process, on its own exchange."""
    exchange = unique_exchange()
    root = tmp_path / "worker"
    process = start_worker(exchange, rekognition, root)
    try:
        yield exchange, rekognition
    finally:
        try:
            stop_worker(process, root)
        finally:
            delete_queue(work_queue(exchange, "snapshot"))


@pytest.mark.broker
def test_a_worker_decides_and_the_daemon_publishes_its_decision(
    tmp_path: Path, camera: CameraSimulator, worker: tuple[str, FakeRekognition]
) -> None:
    exchange, rekognition = worker
    rekognition.reply_labels([label("Person", 97.0, boxes=[(0.1, 0.2, 0.3, 0.6)])])
    rekognition.reply_error("ThrottlingException", times=5)
    # The daemon has no backend settings of its own: no region, no keys.
    settings = make_settings(
        tmp_path / "daemon",
        exchange,
        **foscam_env(),
        OBJECT_DETECTION_ENABLED="true",
        DETECTION_REMOTE="true",
        DETECTION_DEDUPE_SECONDS="0",
    )
    params = f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            for count in (1, 2):
                peer.send_trigger(trigger_body(KEY, device_params=params))
                assert len(peer.wait_for_images(count)) == count
            report = app.report()
    finally:
        peer.close()
    person, throttled = (event["inputs"][0] for event in peer.images())
    assert person["analysed"] is True
    assert person["detections"][0]["label"] == "Person"
    assert person["detections"][0]["person"] is True
    assert person["decided_by"] == "rekognition"
    # Boxes drawn by the daemon, beside the image it keeps.
    assert Path(person["annotated_path"]).is_file()
    assert throttled["analysed"] is False
    assert throttled["detection_error"].startswith("throttled")
    assert report.detail["detection_workers"] == 1
    assert not [line for line in report.warnings if "detect" in line]


@pytest.mark.broker
def test_without_a_worker_the_frame_goes_out_after_the_wait(
    tmp_path: Path, camera: CameraSimulator
) -> None:
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        **foscam_env(),
        OBJECT_DETECTION_ENABLED="true",
        DETECTION_REMOTE="true",
        DETECTION_REMOTE_TIMEOUT="1",
    )
    queue = work_queue(exchange, "snapshot")
    peer = Peer(exchange)
    try:
        with running_app(settings) as app:
            peer.send_trigger(
                trigger_body(KEY, device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}")
            )
            started = time.monotonic()
            (event,) = peer.wait_for_images(1, timeout=15)
            waited = time.monotonic() - started
            warnings = app.report().warnings
            time.sleep(0.5)
            connection = pika.BlockingConnection(BROKER)
            try:
                left = connection.channel().queue_declare(queue, passive=True).method.message_count
            finally:
                connection.close()
    finally:
        peer.close()
        delete_queue(queue)
    frame = event["inputs"][0]
    assert frame["analysed"] is False
    assert frame["detection_error"] == "unreachable: no detection worker answered within 1 s"
    assert waited < 10
    assert any("no detect-worker consumes" in line for line in warnings), warnings
    assert left == 0  # the request expired with the wait: nothing piles up for a late worker


@pytest.mark.broker
def test_a_worker_killed_mid_frame_leaves_it_to_another(
    tmp_path: Path, camera: CameraSimulator, rekognition: FakeRekognition
) -> None:
    exchange = unique_exchange()
    release = rekognition.hold_next_call()
    rekognition.reply_labels([label("Tree", 70.0)], [label("Person", 96.0)])
    settings = make_settings(
        tmp_path / "daemon",
        exchange,
        **foscam_env(),
        OBJECT_DETECTION_ENABLED="true",
        DETECTION_REMOTE="true",
        DETECTION_REMOTE_TIMEOUT="20",
    )
    first = start_worker(exchange, rekognition, tmp_path / "first")
    second: subprocess.Popen[bytes] | None = None
    peer = Peer(exchange)
    try:
        with running_app(settings):
            peer.send_trigger(
                trigger_body(KEY, device_params=f"admin:{PASSWORD}@127.0.0.1:{camera.port}")
            )
            deadline = time.monotonic() + 15
            while not rekognition.calls:  # the first worker is mid-frame, held there
                assert time.monotonic() < deadline, "the first worker never asked Rekognition"
                time.sleep(0.05)
            second = start_worker(exchange, rekognition, tmp_path / "second")
            first.kill()
            first.wait(10)
            (event,) = peer.wait_for_images(1, timeout=25)
    finally:
        release.set()
        peer.close()
        if first.poll() is None:
            first.kill()
        if second is not None:
            stop_worker(second, tmp_path / "second")
        delete_queue(work_queue(exchange, "snapshot"))
    frame = event["inputs"][0]
    # The second worker took the frame the first died on, and its answer stands.
    assert len(rekognition.calls) == 2
    assert frame["analysed"] is True, frame.get("detection_error")
    assert [d["label"] for d in frame["detections"]] == ["Person"]
