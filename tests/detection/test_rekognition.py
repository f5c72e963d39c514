"""The Rekognition detector against a loopback DetectLabels over real HTTP with boto3."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from snapshot_processor.detection.base import Box, DetectionError, Detector, is_person
from snapshot_processor.detection.rekognition import RekognitionDetector
from tests.support.fakes.rekognition import FakeRekognition, label

IMAGE = b"\xff\xd8\xff\xe0 a JPEG as far as the fake cares \xff\xd9"


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Dummy credentials, and nothing from the machine's own AWS setup.
    empty = tmp_path_factory.mktemp("aws")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-not-real")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ALT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_REKOGNITION", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeRekognition]:
    with FakeRekognition() as server:
        yield server


@pytest.fixture
def detector(fake: FakeRekognition) -> Iterator[RekognitionDetector]:
    with RekognitionDetector("eu-west-1", endpoint_url=fake.base_url, max_attempts=1) as found:
        yield found


def test_person_found_with_its_box(fake: FakeRekognition, detector: RekognitionDetector) -> None:
    fake.reply_labels(
        [
            label("Person", 98.5, boxes=[(0.1, 0.2, 0.3, 0.6)]),
            label("Car", 91.0, boxes=[(0.5, 0.5, 0.4, 0.3)], parents=["Vehicle", "Transportation"]),
            label("Outdoors", 88.0),
        ]
    )
    port: Detector = detector  # checked by mypy
    found = port.detect(IMAGE)
    assert [(d.label, d.person) for d in found] == [
        ("Person", True),
        ("Car", False),
        ("Outdoors", False),
    ]
    assert found[0].box == Box(0.1, 0.2, 0.3, 0.6)
    assert found[0].confidence == pytest.approx(98.5)
    assert found[2].box is None
    assert found[0].as_dict() == {
        "label": "Person",
        "confidence": 98.5,
        "box": {"left": 0.1, "top": 0.2, "width": 0.3, "height": 0.6},
        "person": True,
    }
    (call,) = fake.calls
    assert call.image == IMAGE
    assert call.params["MinConfidence"] == 55
    assert call.params["MaxLabels"] == 20
    assert call.headers["x-amz-target"] == "RekognitionService.DetectLabels"
    assert call.headers["content-type"].startswith("application/x-amz-json-1.1")
    assert "/eu-west-1/rekognition/" in call.headers["authorization"]


def test_one_detection_per_instance(fake: FakeRekognition, detector: RekognitionDetector) -> None:
    fake.reply_labels([label("Person", 95.0, boxes=[(0.0, 0.0, 0.2, 0.5), (0.6, 0.1, 0.2, 0.8)])])
    found = detector.detect(IMAGE)
    assert len(found) == 2
    assert all(d.person and d.box is not None for d in found)


def test_no_person(fake: FakeRekognition, detector: RekognitionDetector) -> None:
    fake.reply_labels(
        [label("Car", 99.0, boxes=[(0.2, 0.3, 0.5, 0.4)], parents=["Vehicle"]), label("Tree", 80.0)]
    )
    found = detector.detect(IMAGE)
    assert [d.label for d in found] == ["Car", "Tree"]
    assert not any(d.person for d in found)


def test_face_with_parent_person_is_a_person(
    fake: FakeRekognition, detector: RekognitionDetector
) -> None:
    fake.reply_labels([label("Face", 93.0, parents=["Head", "Person"])])
    (face,) = detector.detect(IMAGE)
    assert face.person
    assert face.box is None


def test_person_below_the_person_threshold_is_not_a_person(
    fake: FakeRekognition, detector: RekognitionDetector
) -> None:
    fake.reply_labels([label("Person", 62.0, boxes=[(0.1, 0.1, 0.2, 0.2)])])
    (weak,) = detector.detect(IMAGE)
    assert weak.label == "Person"
    assert not weak.person


def test_per_label_person_minimum(fake: FakeRekognition) -> None:
    fake.reply_labels([label("Face", 85.0, parents=["Person"]), label("Person", 85.0)])
    with RekognitionDetector(
        "eu-west-1", endpoint_url=fake.base_url, person_overrides={"face": 90.0}, max_attempts=1
    ) as detector:
        face, person = detector.detect(IMAGE)
    assert not face.person
    assert person.person


def test_person_rule() -> None:
    assert is_person("Person", [], 80.0, 80.0)
    assert is_person("person", [], 99.0, 80.0)
    assert is_person("Hand", ["Body Part", "Person"], 90.0, 80.0)
    assert not is_person("Person", [], 79.9, 80.0)
    assert not is_person("Mannequin", ["Toy"], 99.0, 80.0)


@pytest.mark.parametrize(
    ("error_type", "reason"),
    [
        ("InvalidImageFormatException", "invalid_image"),
        ("ImageTooLargeException", "invalid_image"),
        ("AccessDeniedException", "access_denied"),
        ("UnrecognizedClientException", "access_denied"),
        ("ExpiredTokenException", "access_denied"),
        ("InternalServerError", "error"),
    ],
)
def test_errors_are_mapped(
    fake: FakeRekognition, detector: RekognitionDetector, error_type: str, reason: str
) -> None:
    fake.reply_error(error_type, status=500 if error_type == "InternalServerError" else 400)
    with pytest.raises(DetectionError) as caught:
        detector.detect(IMAGE)
    assert caught.value.reason == reason
    assert error_type in str(caught.value)
    assert "test-secret-not-real" not in str(caught.value)
    assert len(fake.calls) == 1


def test_throttling_is_retried_within_the_limit_then_reported(fake: FakeRekognition) -> None:
    fake.reply_error("ThrottlingException", times=5)
    with (
        RekognitionDetector("eu-west-1", endpoint_url=fake.base_url, max_attempts=2) as detector,
        pytest.raises(DetectionError) as caught,
    ):
        detector.detect(IMAGE)
    assert caught.value.reason == "throttled"
    assert len(fake.calls) == 2  # one retry, then the stage hears of it


def test_provisioned_throughput_is_throttling(
    fake: FakeRekognition, detector: RekognitionDetector
) -> None:
    fake.reply_error("ProvisionedThroughputExceededException")
    with pytest.raises(DetectionError) as caught:
        detector.detect(IMAGE)
    assert caught.value.reason == "throttled"


def test_empty_image_is_invalid_without_a_call(
    fake: FakeRekognition, detector: RekognitionDetector
) -> None:
    with pytest.raises(DetectionError) as caught:
        detector.detect(b"")
    assert caught.value.reason == "invalid_image"
    assert fake.calls == []


def test_endpoint_unreachable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        RekognitionDetector(
            "eu-west-1", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1
        ) as detector,
        pytest.raises(DetectionError) as caught,
    ):
        detector.detect(IMAGE)
    assert caught.value.reason == "unreachable"
    assert f"127.0.0.1:{port}" in caught.value.message
    assert caught.value.__context__ is None


def test_endpoint_from_the_environment(
    fake: FakeRekognition, monkeypatch: pytest.MonkeyPatch
) -> None:
    # boto3 itself reads AWS_ENDPOINT_URL_REKOGNITION when no endpoint_url is given.
    monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", fake.base_url)
    fake.reply_labels([label("Person", 99.0, boxes=[(0.4, 0.1, 0.2, 0.7)])])
    with RekognitionDetector(None, max_attempts=1) as detector:
        assert detector.endpoint.rstrip("/") == fake.base_url
        (person,) = detector.detect(IMAGE)
    assert person.person
    (call,) = fake.calls
    assert "/eu-west-1/rekognition/" in call.headers["authorization"]


def test_missing_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ValueError, match="AWS_DEFAULT_REGION"):
        RekognitionDetector(None)
