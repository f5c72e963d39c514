"""``detection evaluate`` and check-config's word on it: a labelled set built here, replayed
through a tiny ONNX model whose person confidence is the image's brightness, so every figure
printed is one worked out by hand; the cloud (the loopback Rekognition fake) is asked only
with ``--cloud``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapshot_processor import cli
from snapshot_processor.cli.common import EXIT_CONFIG, EXIT_START
from snapshot_processor.detection.budget import DailyBudget
from snapshot_processor.detection.evaluate import EVALUATIONS_FILE
from snapshot_processor.detection.labelled import LabelledSet
from snapshot_processor.detection.registry import BUDGET_FILE
from tests.support.fakes.rekognition import FakeRekognition, label
from tools.brightness_model import brightness_model, grey

pytestmark = pytest.mark.local_extra

# Grey levels and the model's person confidence: 250 about 98 %, 235 about 92 %, 128 about
# 50 % (between a chain's clear and sure), 20 about 8 % (below every threshold).
PERSON = [250, 235, 235, 20]
NOT_PERSON = [235, 20, 20, 20]
CLOUD_SAID_PERSON = [{"label": "Person", "confidence": 99.0, "person": True, "box": None}]


def write_settings(tmp_path: Path, name: str, **values: str) -> Path:
    """A settings file sharing the one data root (JSON strings are TOML basic strings)."""
    settings = {
        "SNAPSHOTS_ROOT_DIR": str(tmp_path / "data"),
        "SECRETS_DIR": str(tmp_path / "no-secrets"),
        "DEVICE_NAME": "garage",
        "HTTP_PORT": "0",
        "OBJECT_DETECTION_ENABLED": "true",
        "OBJECT_DETECTION_BACKEND": "onnx",
        "ONNX_MODEL_PATH": str(model_of(tmp_path)),
        "ONNX_LABELS": "person",
        **values,
    }
    path = tmp_path / name
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def model_of(tmp_path: Path) -> Path:
    path = tmp_path / "brightness.onnx"
    return path if path.is_file() else brightness_model(path)


def label_set(tmp_path: Path, *images: tuple[int, str, str | None, list[dict[str, Any]]]) -> None:
    """The labelled set as verdicts leave it: (grey level, verdict, decided_by, detections)."""
    labelled = LabelledSet(tmp_path / "data", 1000)
    try:
        for n, (level, verdict, decided_by, said) in enumerate(images):
            labelled.add(
                event_id=f"e{n}",
                verdict=verdict,
                camera="Front Door camera",
                taken=1_800_000_000.0 + n,
                source="page",
                decided_by=decided_by,
                detections=said,
                image=grey(level),
            )
    finally:
        labelled.close()


def plain_set(tmp_path: Path) -> None:
    label_set(
        tmp_path,
        *[(level, "person", "onnx", []) for level in PERSON],
        *[(level, "not_person", "onnx", []) for level in NOT_PERSON],
    )


def run(settings: Path, *argv: str) -> int:
    return cli.main(["--config", str(settings), *argv])


def section(out: str, title: str) -> str:
    """The lines of one configuration's figures (its title line to the next unindented)."""
    found = re.search(rf"^{re.escape(title)}.*\n((?:  .*\n)*)", out, re.MULTILINE)
    assert found, out
    return found[0]


@pytest.fixture
def rekognition(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRekognition]:
    with FakeRekognition() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", fake.base_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key")
        yield fake


def test_precision_and_recall_are_those_worked_out_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(tmp_path, "settings.toml")
    plain_set(tmp_path)
    assert run(settings, "detection", "evaluate") == 0
    out = capsys.readouterr().out
    assert "8 image(s), 4 with a person, 4 without" in out
    running = section(out, "running configuration: onnx")
    # 3 of the 4 persons are bright (found), 1 of the 4 others is too (a false alarm).
    assert "  precision (person): 0.750 (3 of 4 said to show a person)\n" in running
    assert "  recall (person): 0.750 (3 of 4 with a person found)\n" in running
    assert (
        "  cloud calls: 0 for 8 image(s) (0.000 per image), 0.0000 at 0.001 an image\n" in running
    )
    assert "  undecided: 0\n" in running
    kept = json.loads((tmp_path / "data" / EVALUATIONS_FILE).read_text())["evaluations"]
    assert [(e["name"], e["precision"], e["recall"]) for e in kept] == [("running", 0.75, 0.75)]


def test_another_configuration_is_measured_beside_and_the_difference_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(tmp_path, "settings.toml")
    stricter = write_settings(tmp_path, "stricter.toml", PERSON_MIN_CONFIDENCE="95")
    plain_set(tmp_path)
    assert run(settings, "detection", "evaluate", "--config", str(stricter)) == 0
    out = capsys.readouterr().out
    assert "  precision (person): 0.750 " in section(out, "running configuration: onnx")
    other = section(out, f"other configuration ({stricter}): onnx")
    # Only the brightest person (98 %) reaches 95 %: no false alarm, 3 persons missed.
    assert "  precision (person): 1.000 (1 of 1 said to show a person)\n" in other
    assert "  recall (person): 0.250 (1 of 4 with a person found)\n" in other
    assert section(out, "difference (other minus running):") == (
        "difference (other minus running):\n"
        "  precision (person): +0.250\n"
        "  recall (person): -0.500\n"
        "  cloud calls: +0 (+0.000 per image), +0.0000 in price\n"
        "  undecided: +0\n"
    )

    # check-config, from what was kept (nothing replayed): the stricter configuration
    # finds fewer persons than the last other one evaluated, and says so with both figures.
    assert run(stricter, "check-config") == 0
    [warning] = [line for line in capsys.readouterr().out.splitlines() if "detection" in line]
    assert warning.startswith("warning: detection: this configuration (onnx: precision 1.000, ")
    assert "recall 0.250 on 8 labelled image(s)" in warning
    assert (
        "worse on the labelled set than the last other one evaluated (onnx: precision 0.750, recall 0.750 on 8"
        in warning
    )
    # One never evaluated: a hint to measure it.
    looser = write_settings(tmp_path, "looser.toml", PERSON_MIN_CONFIDENCE="70")
    assert run(looser, "check-config") == 0
    assert (
        "hint: this detection configuration (onnx) was never evaluated on the 8 labelled "
        "image(s); 'snapshot-processor detection evaluate' measures it"
    ) in capsys.readouterr().out
    # Measured, and no worse than the last other one evaluated: nothing to say.
    assert run(looser, "detection", "evaluate") == 0
    assert run(settings, "detection", "evaluate") == 0
    capsys.readouterr()
    assert run(looser, "check-config") == 0
    assert "detection" not in capsys.readouterr().out


def test_a_chain_counts_its_cloud_calls_and_never_asks_the_cloud_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rekognition: FakeRekognition
) -> None:
    settings = write_settings(
        tmp_path,
        "chain.toml",
        OBJECT_DETECTION_BACKEND="onnx,rekognition",
        AWS_DEFAULT_REGION="eu-west-1",
        DETECTION_PRICE_PER_IMAGE="0.002",
    )
    label_set(
        tmp_path,
        (235, "person", "onnx", []),
        (128, "person", "rekognition", CLOUD_SAID_PERSON),  # the cloud's answer, recorded
        (20, "person", "onnx", []),
        (235, "person", "onnx", []),
        (128, "not_person", "onnx", []),  # unsure, and no cloud answer recorded
        (20, "not_person", "onnx", []),
        (20, "not_person", "onnx", []),
        (20, "not_person", None, []),
    )
    assert run(settings, "detection", "evaluate") == 0
    chain = section(capsys.readouterr().out, "running configuration: onnx,rekognition")
    # The two mid-grey frames go to the cloud: one answered as recorded, one undecided.
    assert "  precision (person): 1.000 (3 of 3 said to show a person)\n" in chain
    assert "  recall (person): 0.750 (3 of 4 with a person found)\n" in chain
    assert (
        "  cloud calls: 2 for 8 image(s) (0.250 per image), 0.0040 at 0.002 an image; "
        "1 answered as recorded with the image, 0 asked now\n"
    ) in chain
    assert "  undecided: 1 (frames the cloud would answer, with no answer recorded" in chain
    assert rekognition.calls == []

    # --cloud: the one frame without an answer is asked, under the daemon's own budget.
    rekognition.reply_labels([label("Person", 97.0)])
    assert run(settings, "detection", "evaluate", "--cloud") == 0
    chain = section(capsys.readouterr().out, "running configuration: onnx,rekognition")
    assert "  precision (person): 0.750 (3 of 4 said to show a person)\n" in chain
    assert "1 answered as recorded with the image, 1 asked now\n" in chain
    assert "  undecided: 0\n" in chain
    [asked] = rekognition.calls
    assert asked.image == grey(128)
    # What it spent counts against the day, in the daemon's budget file.
    budget = DailyBudget(tmp_path / "data" / BUDGET_FILE, None, 0.002)
    try:
        spent = budget.today()
    finally:
        budget.close()
    assert spent.calls == 1
    assert spent.money == pytest.approx(0.002)


def test_no_labelled_image_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(tmp_path, "settings.toml")
    assert run(settings, "detection", "evaluate") == 0
    assert "no image yet; give verdicts on events first" in capsys.readouterr().out
    assert run(settings, "check-config") == 0
    assert "detection" not in capsys.readouterr().out  # nothing to measure on yet
    plain_set(tmp_path)
    missing = tmp_path / "nowhere.toml"
    assert run(settings, "detection", "evaluate", "--config", str(missing)) == EXIT_CONFIG
    assert f"snapshot-processor detection: --config {missing}: " in capsys.readouterr().err
    broken = write_settings(tmp_path, "broken.toml")
    model_of(tmp_path).write_bytes(b"not a model")
    assert run(broken, "detection", "evaluate") == EXIT_START
    line = capsys.readouterr().err.strip()
    assert line.startswith("snapshot-processor detection: detection (onnx) cannot start: ")
    assert "\n" not in line
