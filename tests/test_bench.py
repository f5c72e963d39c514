"""Tiny runs of ``make bench``'s parts, so the benchmark cannot rot: every figure is
measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.broker import BROKER
from tests.support.paths import CHECKOUT
from tools.rtsp_camera import available

pytestmark = pytest.mark.broker

FIGURES = (
    "latency_p50_ms",
    "latency_p99_ms",
    "sustained_events_per_s",
    "sustained_cpu_percent",
    "one_camera_s",
    "burst_32_s",
    "burst_32_warm_s",
    "rss_idle_mb",
    "rss_after_warmup_mb",
    "rss_after_total_mb",
    "idle_cpu_percent",
)


def quick_bench(out: Path, part: str) -> dict[str, Any]:
    """The figures of ``python -m tools.bench --quick --only <part>``."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--quick", "--only", part, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=CHECKOUT,  # where the tools package is
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures: dict[str, Any] = json.loads((out / "bench.json").read_text())
    assert figures["daemon_exit_code"] == 0
    return figures


def assert_exchanges_gone(names: list[str]) -> None:
    """The run's exchanges are gone with it."""
    connection = pika.BlockingConnection(BROKER)
    try:
        for name in names:
            for exchange in (name, f"{name}_control"):
                channel = connection.channel()
                with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                    channel.exchange_declare(exchange, passive=True)
    finally:
        connection.close()


def test_quick_bench_measures_every_figure_beside_both_floors(tmp_path: Path) -> None:
    figures = quick_bench(tmp_path, "chain")
    for floor in ("raw_floor", "durable_floor"):
        assert set(figures[floor]) == {"p50_ms", "p99_ms", "events_per_s"}
        assert all(value > 0 for value in figures[floor].values())
    for name in FIGURES:
        assert figures[name] >= 0, name
    assert figures["latency_p50_ms"] > 0
    # Every camera answers after 200 ms: a burst cannot be quicker, whatever else runs.
    assert figures["one_camera_s"] >= 0.2
    assert figures["burst_32_s"] >= 0.2
    assert figures["burst_32_warm_s"] >= 0.2
    assert figures["upload"]["count"] == 10
    assert_exchanges_gone([figures["exchange"]])
    table = (tmp_path / "bench.md").read_text()
    for row in ("trigger → event, p50", "sustained events/s", "32 cameras", "RSS idle", "idle CPU"):
        assert row in table
    assert "RTSP cameras" not in table


@pytest.mark.rtsp
@pytest.mark.skipif(not available(), reason="GStreamer's RTSP server is not installed")
def test_quick_rtsp_bench_measures_every_figure_against_its_target(tmp_path: Path) -> None:
    figures = quick_bench(tmp_path, "rtsp")
    rtsp = figures["rtsp"]
    for case, count in (("warm", 4), ("on_demand", 2), ("warm_many", 4)):
        assert rtsp[case]["count"] == count
        assert 0 < rtsp[case]["p50_ms"] <= rtsp[case]["p99_ms"] <= rtsp[case]["max_ms"], case
        # The image is the stream's newest when the trigger came, or one decoded after it.
        assert rtsp[case]["age_min_ms"] <= rtsp[case]["age_median_ms"] <= rtsp[case]["age_max_ms"]
        assert rtsp[case]["age_max_ms"] < 5000, case
    assert rtsp["on_demand"]["age_max_ms"] < 0  # taken after the trigger, from a new stream
    for name in ("idle_cpu_none_percent", "idle_cpu_warm_percent"):
        assert rtsp[name] >= 0, name
    assert rtsp["rss_none_mb"] > 0
    assert rtsp["rss_warm_many_open_mb"] > rtsp["rss_none_mb"]  # the streams do cost memory
    decode = rtsp["full_decode"]
    assert decode["cpu_percent"] > 0
    # 15 frames a second, every one decoded (key frames only would be 0.5); a busy machine
    # makes the decoder fall behind and catch up within the window, so the bounds are wide.
    assert 5 < decode["fps"] < 45
    assert_exchanges_gone(figures["exchanges"])
    table = (tmp_path / "bench.md").read_text()
    assert "## The chain" not in table
    for row in (
        "| warm: trigger → event, p50",
        "| warm: image age",
        "| on demand: trigger → event",
        "| idle CPU of one warm stream",
        "| for comparison: every frame decoded",
        "| RSS per warm stream, 2 streams open",
        "| 2 warm: trigger → event",
    ):
        assert row in table, row
    assert table.count(" | PASS |") + table.count(" | FAIL |") == 9


def test_quick_bundle_bench_times_the_bundle_event_and_the_first_byte_off_site(
    tmp_path: Path,
) -> None:
    figures = quick_bench(tmp_path, "bundle")
    bundle = figures["bundle"]
    for name in ("event", "offsite", "single", "daemon_offsite"):
        assert bundle[name]["count"] == 3, name
        assert 0 < bundle[name]["p50_ms"] <= bundle[name]["max_ms"], name
    # Nothing comes sooner than the cameras allow: each answers in 200 ms, and a bundle's
    # last frames are asked for 1 s after its first.
    assert bundle["one_answer_ms"] >= 200
    assert bundle["single"]["p50_ms"] >= 200
    assert bundle["event"]["p50_ms"] >= 1200
    # The first byte off-site comes after the first frame's answer, long before the last.
    assert 200 <= bundle["offsite"]["p50_ms"] < bundle["event"]["p50_ms"] - 500
    # Every frame of the 4 cameras' bursts went up, and the manifest.
    assert min(bundle["puts_per_bundle"]) >= 4 * 3 + 1
    assert bundle["event_target_ms"] > 0
    assert bundle["offsite_target_ms"] > 0
    assert_exchanges_gone(figures["exchanges"])
    table = (tmp_path / "bench.md").read_text()
    assert "## The chain" not in table
    for row in (
        "| sensor → bundle event, 4 cameras",
        "| sensor → first byte off-site",
        "| one snapshot (Cam5, alone in its bundle): trigger → image event",
        "| one camera's answer",
    ):
        assert row in table, row
    assert table.count(" | PASS |") + table.count(" | FAIL |") == 2


@pytest.mark.mqtt
def test_quick_mqtt_bench_times_both_sides_of_each_trigger(tmp_path: Path) -> None:
    figures = quick_bench(tmp_path, "mqtt")
    mqtt = figures["mqtt"]
    for side in ("amqp", "mqtt"):
        assert mqtt[side]["count"] == 10, side
        assert 0 < mqtt[side]["p50_ms"] <= mqtt[side]["max_ms"], side
    assert mqtt["target_ms"] == pytest.approx(1.2 * mqtt["amqp"]["p50_ms"])
    assert_exchanges_gone(figures["exchanges"])
    table = (tmp_path / "bench.md").read_text()
    assert "## Home Assistant over MQTT" in table
    assert "## The chain" not in table
    assert "| trigger → image on the camera's MQTT topic, 10 triggers" in table
    assert table.count(" | PASS |") + table.count(" | FAIL |") == 1


@pytest.mark.local_extra
def test_quick_detection_bench_times_each_format_and_the_chain(tmp_path: Path) -> None:
    figures = quick_bench(tmp_path, "detection")
    detection = figures["detection"]
    assert set(detection["models"]) == {"hog", "yolov5", "yolov8", "yolox", "ssd"}
    assert all(model["p50_ms"] > 0 for model in detection["models"].values())
    # Ten frames, every fifth unsure: two cloud calls, none for the sure frames.
    assert detection["frames"] == 10
    assert detection["cloud_calls"] == 2
    assert detection["cloud_calls_per_frame"] == pytest.approx(0.2)
    for run in ("local", "chain"):
        assert detection[run]["sure"]["count"] == 8
        assert detection[run]["unsure"]["count"] == 2
    assert detection["sure_ratio"] == pytest.approx(
        detection["chain"]["sure"]["p50_ms"] / detection["local"]["sure"]["p50_ms"]
    )
    assert_exchanges_gone(figures["exchanges"])
    table = (tmp_path / "bench.md").read_text()
    assert "## Detection" in table
    assert "| chain (onnx,rekognition) on 10 frames" in table
    assert table.count(" | PASS |") + table.count(" | FAIL |") == 2
