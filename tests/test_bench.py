"""A tiny run of ``make bench``, so the benchmark cannot rot: every figure is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pika
import pytest

from tests.support.broker import BROKER
from tests.support.paths import CHECKOUT

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


def test_quick_bench_measures_every_figure_beside_both_floors(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=CHECKOUT,  # where the tools package is
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["daemon_exit_code"] == 0
    for floor in ("raw_floor", "durable_floor"):
        assert set(figures[floor]) == {"p50_ms", "p99_ms", "events_per_s"}
        assert all(value > 0 for value in figures[floor].values())
    for name in FIGURES:
        assert figures[name] >= 0, name
    assert figures["latency_p50_ms"] > 0
    assert figures["burst_32_s"] >= figures["one_camera_s"] * 0.9  # all 32 did arrive
    assert figures["burst_32_warm_s"] >= figures["one_camera_s"] * 0.9
    assert figures["upload"]["count"] == 10
    # The run's exchanges are gone with it.
    connection = pika.BlockingConnection(BROKER)
    try:
        for name in (figures["exchange"], f"{figures['exchange']}_control"):
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                channel.exchange_declare(name, passive=True)
    finally:
        connection.close()
    table = (tmp_path / "bench.md").read_text()
    for row in ("trigger → event, p50", "sustained events/s", "32 cameras", "RSS idle", "idle CPU"):
        assert row in table
