"""Trigger to event with detection on: Rekognition (a loopback fake) flags a person."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, foscam_env, make_settings
from tests.support.fakes.rekognition import FakeRekognition, label
from tools.camera_simulator import CameraSimulator

pytestmark = pytest.mark.broker


@pytest.fixture
def rekognition(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        # boto3's own configuration: the endpoint and credentials of the outside service.
        monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", fake.base_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
        yield fake


@pytest.fixture
def camera() -> Iterator[CameraSimulator]:
    with CameraSimulator(user="admin", password=PASSWORD) as simulator:
        yield simulator


def test_person_found_and_errors_still_publish(
    tmp_path: Path, camera: CameraSimulator, rekognition: FakeRekognition
) -> None:
    rekognition.reply_labels(
        [
            label("Person", 98.5, boxes=[(0.1, 0.2, 0.3, 0.6)]),
            label("Car", 91.0, boxes=[(0.5, 0.5, 0.4, 0.3)]),
        ],
        [label("Tree", 88.0)],
    )
    rekognition.reply_error("ThrottlingException", times=5)
    exchange = unique_exchange()
    settings = make_settings(
        tmp_path,
        exchange,
        **foscam_env(),
        OBJECT_DETECTION_ENABLED="true",
        AWS_DEFAULT_REGION="eu-west-1",
        DETECTION_DEDUPE_SECONDS="0",
    )
    params = f"admin:{PASSWORD}@127.0.0.1:{camera.port}"
    peer = Peer(exchange)
    try:
        with running_app(settings):
            for count in (1, 2, 3):
                peer.send_trigger(trigger_body("Front Door camera", device_params=params))
                assert len(peer.wait_for_images(count)) == count
    finally:
        peer.close()
    person, nobody, throttled = (event["inputs"][0] for event in peer.images())
    assert person["event_detail"] == "1 person(s) and 2 things"  # Person and Car: 2 labels
    assert person["analysed"] is True
    assert [d["label"] for d in person["detections"]] == ["Person", "Car"]
    assert person["detections"][0]["person"] is True
    assert person["detections"][0]["box"] == pytest.approx(
        {"left": 0.1, "top": 0.2, "width": 0.3, "height": 0.6}
    )
    assert Path(person["annotated_path"]).is_file()
    assert Path(person["annotated_path"]).parent == Path(person["storage_path"]).parent
    assert "event_detail" not in nobody
    assert nobody["detections"][0]["label"] == "Tree"
    assert throttled["analysed"] is False
    assert throttled["detection_error"].startswith("throttled")
    assert throttled["image"] == Path(throttled["storage_path"]).read_bytes()
    assert len(rekognition.calls) >= 3
