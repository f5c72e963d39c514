"""The detection chain: the local model decides where it is sure, the cloud backend only in
between, never past the day's budget, which a restart does not reset. Over the real broker
with a tiny ONNX model whose person confidence is the image's brightness, and the loopback
Rekognition fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pylib.config.settings import ConfigError
from pylib.runtime.health import Health
from snapshot_processor import config
from snapshot_processor.detection.base import Detection, DetectionError
from snapshot_processor.detection.budget import DailyBudget
from snapshot_processor.detection.cascade import Cascade
from tests.support.broker import Peer, running_app, trigger_body, unique_exchange
from tests.support.daemon import PASSWORD, camera_env, make_settings
from tests.support.fakes.rekognition import FakeRekognition, label
from tests.support.metrics import sample_gauge
from tests.support.net import free_port
from tools.brightness_model import brightness_model, grey
from tools.camera_simulator import CameraSimulator

DAY = 1_800_000_000.0  # 2027-01-15, 08:00 UTC


class Scripted:
    """A backend that answers what it is given, counting its calls."""

    def __init__(self, name: str, answer: list[Detection] | DetectionError) -> None:
        self.name = name
        self.answer = answer
        self.calls = 0

    def detect(self, image: bytes) -> list[Detection]:
        self.calls += 1
        if isinstance(self.answer, DetectionError):
            raise self.answer
        return list(self.answer)

    def close(self) -> None:
        return None

    def health(self) -> Health:
        return Health()


def person(confidence: float) -> list[Detection]:
    return [Detection("person", confidence, None, confidence >= 80)]


def cascade(
    tmp_path: Path,
    local: Scripted,
    cloud: Scripted,
    *,
    limit: float | None = None,
    now: list[float] | None = None,
) -> Cascade:
    clock = now or [DAY]
    budget = DailyBudget(tmp_path / "budget.sqlite3", limit, 0.001, clock=lambda: clock[0])
    return Cascade(local, cloud, sure=80, clear=20, min_confidence=55, budget=budget)


def test_sure_and_clear_frames_never_reach_the_cloud_and_unsure_ones_do(tmp_path: Path) -> None:
    cloud = Scripted("rekognition", person(99))
    for confidence, asked, backend, why in (
        (95.0, 0, "onnx", "sure"),
        (80.0, 0, "onnx", "sure"),
        (19.9, 0, "onnx", "clear"),
        (0.0, 0, "onnx", "clear"),
        (20.0, 1, "rekognition", "unsure"),
        (79.9, 2, "rekognition", "unsure"),
    ):
        chain = cascade(tmp_path, Scripted("onnx", person(confidence)), cloud)
        decision = chain.decide(b"jpeg")
        chain.close()
        assert (cloud.calls, decision.backend, decision.why) == (asked, backend, why), confidence
        assert decision.local_person_confidence == confidence
    # The local answer keeps only what reaches DETECTION_MIN_CONFIDENCE, as a lone one does.
    chain = cascade(tmp_path, Scripted("onnx", person(19)), cloud)
    assert chain.decide(b"jpeg").detections == []
    chain.close()


def test_the_budget_stops_calls_at_its_cap_survives_a_restart_and_opens_the_next_day(
    tmp_path: Path,
) -> None:
    now = [DAY]
    unsure, cloud = Scripted("onnx", person(50)), Scripted("rekognition", person(99))
    chain = cascade(tmp_path, unsure, cloud, limit=0.0025, now=now)
    whys = [chain.decide(b"x").why for _ in range(4)]
    assert whys == ["unsure", "unsure", "budget spent", "budget spent"]
    assert cloud.calls == 2
    assert sample_gauge("detection_spend_today") == pytest.approx(0.002)
    [warning] = chain.health().warnings
    assert "today's budget of 0.0025 is spent (2 cloud calls)" in warning
    assert chain.health().detail["detection"]["budget"]["spent"] == pytest.approx(0.002)
    chain.close()

    again = cascade(tmp_path, unsure, cloud, limit=0.0025, now=now)
    assert again.decide(b"x").why == "budget spent"
    assert cloud.calls == 2
    now[0] = DAY + 86_400  # the next UTC day
    assert again.decide(b"x").why == "unsure"
    assert cloud.calls == 3
    again.close()


def test_a_call_that_may_have_been_charged_stays_counted(tmp_path: Path) -> None:
    # A timeout can come after the service analysed the image: the bound must hold.
    failing = Scripted("rekognition", DetectionError("unreachable", "read timed out"))
    chain = cascade(tmp_path, Scripted("onnx", person(60)), failing, limit=0.001)
    assert chain.decide(b"x").why == "cloud failed: unreachable"
    assert chain.decide(b"x").why == "budget spent"
    assert failing.calls == 1
    assert chain.budget.today().calls == 1
    chain.close()


def test_settings_of_a_chain_are_checked_at_start(tmp_path: Path) -> None:
    def problems(**env: str) -> str:
        with pytest.raises(ConfigError) as caught:
            config.load(env={"SECRETS_DIR": str(tmp_path / "none"), **env})
        return str(caught.value)

    chain = {
        "OBJECT_DETECTION_ENABLED": "true",
        "OBJECT_DETECTION_BACKEND": "onnx,rekognition",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert "a chain is a local backend, then a cloud one" in problems(
        OBJECT_DETECTION_BACKEND="rekognition,onnx"
    )
    assert "DETECTION_DAILY_BUDGET bounds the cloud calls of a chain" in problems(
        DETECTION_DAILY_BUDGET="1"
    )
    assert "DETECTION_CASCADE_CLEAR (90) is above DETECTION_CASCADE_SURE (80)" in problems(
        **chain, ONNX_MODEL_PATH=__file__, DETECTION_CASCADE_CLEAR="90"
    )
    assert "DETECTION_CASCADE_SURE (70) is below PERSON_MIN_CONFIDENCE (80)" in problems(
        **chain, ONNX_MODEL_PATH=__file__, DETECTION_CASCADE_SURE="70"
    )
    assert "ONNX_MODEL_PATH is needed" in problems(**chain)
    ok = config.load(
        env={
            "SECRETS_DIR": str(tmp_path / "none"),
            **chain,
            "OBJECT_DETECTION_BACKEND": "local, rekognition",
        }
    )
    assert ok.detection.chain == ("local", "rekognition")


def test_a_failed_cloud_call_costs_nothing_and_the_local_answer_stands(tmp_path: Path) -> None:
    failing = Scripted("rekognition", DetectionError("throttled", "slow down"))
    chain = cascade(tmp_path, Scripted("onnx", person(60)), failing, limit=0.001)
    first, second = chain.decide(b"x"), chain.decide(b"x")
    assert (first.backend, first.why) == ("onnx", "cloud failed: throttled")
    assert [d.label for d in first.detections] == ["person"]
    # Refunded: the second call is still within a budget of one.
    assert second.why == "cloud failed: throttled"
    assert failing.calls == 2
    assert chain.budget.today().calls == 0
    chain.close()


# --- over the broker, with a tiny model and the Rekognition fake ------------------------
@pytest.fixture
def rekognition(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", fake.base_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
        yield fake


def entry_of(peer: Peer, count: int) -> dict[str, Any]:
    assert peer.pump_until(lambda: len(peer.images()) >= count, 20)
    return dict(peer.images()[count - 1]["inputs"][0])


@pytest.mark.broker
@pytest.mark.local_extra
def test_the_daemon_asks_the_cloud_only_for_unsure_frames_and_keeps_to_its_budget(
    tmp_path: Path, rekognition: FakeRekognition
) -> None:
    model = brightness_model(tmp_path / "brightness.onnx")
    exchange = unique_exchange()
    shades = {"Bright": 235, "Dim": 128, "Dark": 20}  # about 92 %, 50 % and 8 % a person
    with (
        CameraSimulator(user="admin", password=PASSWORD, image=grey(235)) as bright,
        CameraSimulator(user="admin", password=PASSWORD, image=grey(128)) as dim,
        CameraSimulator(user="admin", password=PASSWORD, image=grey(20)) as dark,
    ):
        env = {
            **camera_env(bright.port, n=1, location="Bright"),
            **camera_env(dim.port, n=2, location="Dim"),
            **camera_env(dark.port, n=3, location="Dark"),
            "OBJECT_DETECTION_ENABLED": "true",
            "OBJECT_DETECTION_BACKEND": "onnx,rekognition",
            "ONNX_MODEL_PATH": str(model),
            "ONNX_LABELS": "person",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "DETECTION_DEDUPE_SECONDS": "0",
            "DETECTION_DAILY_BUDGET": "0.002",
            "DETECTION_PRICE_PER_IMAGE": "0.001",
        }
        rekognition.reply_labels(*[[label("Person", 99.0, boxes=[(0.3, 0.2, 0.3, 0.6)])]] * 3)
        port = free_port()
        settings = make_settings(tmp_path, exchange, HTTP_PORT=str(port), **env)
        peer = Peer(exchange)
        try:
            with running_app(settings) as app:
                sent = 0
                decided = []
                for location in ("Bright", "Dark", "Dim", "Dim", "Dim"):
                    peer.send_trigger(trigger_body(f"{location} camera", device_params=None))
                    sent += 1
                    decided.append(entry_of(peer, sent))
                calls_before_restart = len(rekognition.calls)
                report = app.report()
                page = requests.get(f"http://127.0.0.1:{port}/", timeout=10).text
            # A restart the same day: the budget is still spent.
            with running_app(make_settings(tmp_path, exchange, **env)):
                peer.send_trigger(trigger_body("Dim camera", device_params=None))
                after_restart = entry_of(peer, sent + 1)
        finally:
            peer.close()

    by = [(e["device_key"].split()[0], e["decided_by"], e["cascade"]) for e in decided]
    assert by == [
        ("Bright", "onnx", "sure"),
        ("Dark", "onnx", "clear"),
        ("Dim", "rekognition", "unsure"),
        ("Dim", "rekognition", "unsure"),
        ("Dim", "onnx", "budget spent"),
    ]
    assert calls_before_restart == 2  # the sure and clear frames never reached the fake
    assert decided[0]["local_person_confidence"] == pytest.approx(shades["Bright"] / 2.55, abs=2)
    assert [d["label"] for d in decided[0]["detections"]] == ["person"]
    assert decided[2]["detections"][0]["label"] == "Person"  # Rekognition's answer stands
    assert (after_restart["decided_by"], after_restart["cascade"]) == ("onnx", "budget spent")
    assert len(rekognition.calls) == 2
    assert any("today's budget of 0.002 is spent" in line for line in report.warnings)
    assert report.detail["detection"]["budget"]["cloud_calls"] == 2
    assert "Cloud detection today: 2 call(s), 0.002 spent of a budget of 0.002." in page


@pytest.mark.local_extra
def test_hog_in_a_chain_reports_down_to_clear_and_flags_people_as_the_others_do(
    tmp_path: Path,
) -> None:
    from snapshot_processor.detection import local

    settings = config.load(env={"SECRETS_DIR": str(tmp_path / "none")}).detection
    alone = local.from_settings(settings)
    chained = local.from_settings(settings, floor=20)
    assert (alone.min_confidence, alone.hit_threshold, alone.person_min_confidence) == (
        60.0,
        0.0,
        None,
    )
    # Hits of weight 0 are 50 % sure: below that, only a lower hit threshold finds them.
    assert chained.min_confidence == 20
    assert local.hog_confidence(chained.hit_threshold) == pytest.approx(20, abs=0.01)
    assert chained.person_min_confidence == settings.person_min_confidence == 80


@pytest.mark.local_extra
def test_a_model_that_cannot_load_stops_the_start_with_one_line_naming_it(tmp_path: Path) -> None:
    from pylib.runtime.daemon import StartError
    from snapshot_processor.app import App

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    settings = make_settings(
        tmp_path,
        "unused",
        OBJECT_DETECTION_ENABLED="true",
        OBJECT_DETECTION_BACKEND="onnx,rekognition",
        ONNX_MODEL_PATH=str(broken),
        AWS_DEFAULT_REGION="eu-west-1",
    )
    app = App(settings)
    with pytest.raises(StartError) as caught:
        app.build()
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("detection (onnx,rekognition) cannot start: ")
    assert str(broken) in line
    app.daemon.stop()
